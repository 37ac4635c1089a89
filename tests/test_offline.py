"""nerfstudio's vanilla-nerf trained and evaluated offline through ``python -m nerfqat_plugin.offline``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nerfqat_plugin.offline import main


def _offline(*args: str, cwd: Path) -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore", TORCH_HOME=str(cwd / ".torch-home-empty"))
    proc = subprocess.run(
        [sys.executable, "-m", "nerfqat_plugin.offline", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_vanilla_nerf_trains_and_evaluates_without_lpips_weights(blender_scene: Path, tmp_path: Path):
    _offline(
        "ns-train", "vanilla-nerf", "--machine.device-type", "cpu", "--vis", "tensorboard",
        "--output-dir", str(tmp_path / "out"), "--experiment-name", "v", "--timestamp", "run",
        "--max-num-iterations", "2", "--steps-per-save", "2",
        "--pipeline.datamanager.train-num-rays-per-batch", "16",
        "--pipeline.datamanager.eval-num-rays-per-batch", "512",
        "--pipeline.model.num-coarse-samples", "4", "--pipeline.model.num-importance-samples", "4",
        "blender-data", "--data", str(blender_scene),
        cwd=tmp_path,
    )  # fmt: skip
    config = tmp_path / "out/v/vanilla-nerf/run/config.yml"
    _offline("ns-eval", "--load-config", str(config), "--output-path", str(tmp_path / "eval.json"), cwd=tmp_path)
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert math.isfinite(results["psnr"])
    assert math.isnan(results["fine_lpips"])  # not computable offline: NaN, never a made-up number


def test_unknown_command_is_refused():
    with pytest.raises(SystemExit, match="usage"):
        main(["ns-render"])
