"""The demo: make a scene, train nerf-qat on it, export int8, evaluate both, render a view, print a summary.

    python scripts/demo.py                 # CPU settings (within 10 minutes on 2 cores), GPU settings on CUDA

Everything goes under --workdir (default demo/): the scene, the run, the export, eval JSONs and renders.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import tyro

from nerfqat_plugin.tools.runs import PRESETS, CommandFailed, ns, train_flags

REPO = Path(__file__).resolve().parents[1]

SETTINGS = {
    "cpu": (dataclasses.replace(PRESETS["cpu"], rays=512), 1100),
    "cuda": (PRESETS["gpu"], 20000),
}
"""Preset and most steps per device: on a CPU a small network and batches, on CUDA the full original architecture
(8x256, 64+128 samples, 1024 rays)."""
CPU_TRAIN_SECONDS = 330.0
"""Training time the CPU demo aims at, so that the whole demo stays within 10 minutes on 2 cores: it measures a few
QAT steps first and trains as many steps as fit (between MIN_CPU_STEPS and the preset's)."""
MIN_CPU_STEPS = 600


def cpu_steps(scene: Path, preset, most: int) -> Tuple[int, float]:
    """(steps to train, seconds per QAT step measured here): a few steps of the real trainer on the demo scene."""
    from nerfqat_plugin.llff import LLFFDataParserConfig
    from nerfqat_plugin.registration import nerf_qat
    from nerfqat_plugin.tools.runs import train_step, trainer_config

    with tempfile.TemporaryDirectory() as tmp:
        config = trainer_config(nerf_qat.config, "cpu", Path(tmp), 8, dataclasses.replace(preset, quant_start_step=0))
        config.pipeline.datamanager.dataparser = LLFFDataParserConfig(data=scene, downscale_factor=1)
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        times = []
        for step in range(8):  # the first steps compile the quantized layers and choose their kernels
            start = time.perf_counter()
            train_step(trainer, step)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times[4:])
    return max(MIN_CPU_STEPS, min(most, int(CPU_TRAIN_SECONDS / seconds))), seconds


@dataclass
class Demo:
    """Train, export and evaluate nerf-qat on a scene the project makes itself."""

    workdir: Path = Path("demo")
    """Folder for the scene, the run, the export and the results (replaced if it exists)."""
    device: Optional[str] = None
    """cpu or cuda; default: cuda when available."""

    def main(self) -> None:
        start = time.time()
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        work = self.workdir.resolve()
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        scene = work / "scene"
        print(f"[1/5] writing the demo scene to {scene}", flush=True)
        subprocess.run([sys.executable, str(REPO / "scripts/make_demo_scene.py"), "--output", str(scene)], check=True)

        preset, steps = SETTINGS["cpu" if device == "cpu" else "cuda"]
        if device == "cpu":
            steps, seconds = cpu_steps(scene, preset, steps)
            # QAT for the last part of training, after an fp32 warm-up (at most the default 500 steps)
            preset = dataclasses.replace(preset, quant_start_step=min(500, steps // 2))
            budget = f"{CPU_TRAIN_SECONDS / 60:.1f}-minute"
            print(
                f"      measured {seconds:.2f} s per QAT step on this CPU: {steps} steps (QAT from step "
                f"{preset.quant_start_step}) fit the demo's {budget} training time",
                flush=True,
            )
        print(f"[2/5] training nerf-qat on {device} (log: {work / 'train.log'})", flush=True)
        try:
            flags = train_flags(device, work / "outputs", "demo", steps, preset, timestamp="run")
            schedule = ["--optimizers.fields.scheduler.max-steps", str(steps)]
            data = ["llff-data", "--data", scene, "--downscale-factor", "1"]
            ns("ns-train", *flags, *schedule, *data, log=work / "train.log")
            config = work / "outputs/demo/nerf-qat/run/config.yml"
            export = work / "export-int8"
            print(f"[3/5] exporting int8 weights to {export}", flush=True)
            ns("ns-export-int8", "--load-config", config, "--output-dir", export, log=work / "export.log")

            print("[4/5] evaluating the trained (fake-quantized) run and the int8 export", flush=True)
            results: Dict[str, Dict[str, float]] = {}
            for name, cfg in (("trained", config), ("int8", export / "config.yml")):
                out = work / f"eval-{name}.json"
                renders = work / f"renders-{name}"
                ns("ns-eval", "--load-config", cfg, "--output-path", out, "--render-output-path", renders,
                   log=work / f"eval-{name}.log")  # fmt: skip
                results[name] = json.loads(out.read_text())["results"]
        except CommandFailed as err:
            sys.exit(str(err))

        print("[5/5] summary", flush=True)
        weights = export / "model.safetensors"
        ckpt = sorted((work / "outputs/demo/nerf-qat/run/nerfstudio_models").glob("*.ckpt"))[-1]
        fp32_bytes = results["trained"]["model_bytes_fp32"]
        size, ckpt_size = weights.stat().st_size, ckpt.stat().st_size
        lines = [
            f"PSNR on held-out views: fake-quantized {results['trained']['psnr']:.2f} dB, "
            f"int8 export {results['int8']['psnr']:.2f} dB",
            f"SSIM: fake-quantized {results['trained']['ssim']:.4f}, int8 export {results['int8']['ssim']:.4f}",
            f"MLP weights: fp32 {fp32_bytes / 1e6:.3f} MB; int8 file {size / 1e6:.3f} MB "
            f"({fp32_bytes / size:.2f}x smaller); training checkpoint {ckpt_size / 1e6:.3f} MB",
            f"Eval rays/s: fake-quantized {results['trained']['num_rays_per_sec']:.0f}, "
            f"int8 {results['int8']['num_rays_per_sec']:.0f}",
            f"Renders (ground truth | {'coarse | fine' if 'coarse_psnr' in results['int8'] else 'render'}): "
            f"{work / 'renders-int8'}",
            f"Export: {export} (ns-eval / ns-render / ns-viewer --load-config {export / 'config.yml'})",
            f"Training: {steps} steps, QAT from step {preset.quant_start_step or 500}",
            f"Total time: {(time.time() - start) / 60:.1f} min on {device}",
        ]
        (work / "summary.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    tyro.cli(Demo).main()
