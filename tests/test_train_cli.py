"""The real nerfstudio CLI on a tiny run: ns-train, ns-eval, checkpoint format, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from nerfqat_plugin.tools.runs import BIN
from tests.conftest import run_ns


def test_method_is_listed_with_help():
    out = subprocess.run([str(BIN / "ns-train"), "nerf-qat", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--pipeline.model.quant.weight-bits", "--pipeline.model.quant.fused", "--pipeline.model.num-layers"):
        assert flag in out.stdout
    assert "Bits per weight" in out.stdout  # field docstrings become help text


def test_default_vis_is_not_wandb():
    from nerfqat_plugin.registration import nerf_qat

    assert "wandb" not in nerf_qat.config.vis


def test_checkpoint_loads_with_weights_only(trained_run: Path):
    ckpts = sorted((trained_run.parent / "nerfstudio_models").glob("step-*.ckpt"))
    assert ckpts
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    keys = state["pipeline"].keys()
    assert any(k.endswith("trunk.0.out_quant.max_val") for k in keys)  # quantizer state is checkpointed
    assert not any("lpips" in k for k in keys)  # no LPIPS backbone in checkpoints


def test_ns_eval_reports_quality_and_size(trained_run: Path, tmp_path: Path):
    out = tmp_path / "eval.json"
    output = run_ns("ns-eval", "--load-config", str(trained_run), "--output-path", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())["results"]
    for key in ("psnr", "ssim", "num_params", "model_bytes_fp32", "model_bytes_quantized"):
        assert key in results, key
    assert "lpips" not in results  # offline: left out, never made up
    assert "LPIPS not computed" in output
    assert results["model_bytes_fp32"] == 4 * results["num_params"]
    assert results["model_bytes_quantized"] < results["model_bytes_fp32"] / 2


def test_resume_restores_quantizer_state_and_eval_numbers(trained_run: Path, tmp_path: Path):
    """Load the run's checkpoint through the trainer's resume path: eval metrics equal those of the saved run."""
    script = f"""
import json, sys, torch, yaml
from pathlib import Path
from nerfstudio.utils.eval_utils import eval_setup
cfg_path = Path({str(trained_run)!r})
_, pipeline, _, _ = eval_setup(cfg_path, test_mode="test")
before = pipeline.get_average_eval_image_metrics()
config = yaml.load(cfg_path.read_text(), Loader=yaml.Loader)
config.load_dir = config.get_checkpoint_dir()
config.output_dir = Path({str(tmp_path)!r})
config.max_num_iterations = 2
config.machine.device_type = "cpu"
trainer = config.setup(local_rank=0, world_size=1)
trainer.setup()
resumed = trainer.pipeline.get_average_eval_image_metrics()
trainer.train()
print(json.dumps({{"before": before, "resumed": resumed, "start": trainer._start_step}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("psnr", "ssim"):
        assert result["resumed"][key] == result["before"][key]
    saved = yaml.load(trained_run.read_text(), Loader=yaml.Loader)
    assert result["start"] == saved.max_num_iterations  # resumed after the last saved step
