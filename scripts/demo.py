"""The demo: make a scene, train nerf-qat on it, export int8, evaluate both, render a view, print a summary.

    python scripts/demo.py                 # CPU settings (about 5 minutes on 2 cores), GPU settings on CUDA

Everything goes under --workdir (default demo/): the scene, the run, the export, eval JSONs and renders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
import tyro

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

CPU_SETTINGS = [
    "--max-num-iterations", "1100",
    "--pipeline.model.num-layers", "4",
    "--pipeline.model.layer-width", "128",
    "--pipeline.model.skip-layer", "2",
    "--pipeline.model.view-width", "64",
    "--pipeline.model.num-coarse-samples", "32",
    "--pipeline.model.num-importance-samples", "32",
    "--pipeline.datamanager.train-num-rays-per-batch", "512",
    "--optimizers.fields.scheduler.max-steps", "1100",
]  # fmt: skip
"""Small network and batches: the CPU demo finishes in about 5 minutes on 2 cores."""
GPU_SETTINGS = ["--max-num-iterations", "20000", "--optimizers.fields.scheduler.max-steps", "20000"]
"""The full original architecture (8x256, 64+128 samples, 1024 rays)."""


def run(*args: str, log: Path) -> None:
    """Run a console script from this environment, its output into ``log``; exit with its tail on failure."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with open(log, "w") as f:
        proc = subprocess.run([str(BIN / args[0]), *args[1:]], stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        sys.exit(f"{args[0]} failed, see {log}:\n" + "".join(log.read_text().splitlines(True)[-20:]))


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

        settings: List[str] = CPU_SETTINGS if device == "cpu" else GPU_SETTINGS
        print(f"[2/5] training nerf-qat on {device} (log: {work / 'train.log'})", flush=True)
        run(
            "ns-train", "nerf-qat", "--machine.device-type", device, "--vis", "tensorboard",
            "--output-dir", str(work / "outputs"), "--experiment-name", "demo", "--timestamp", "run",
            "--steps-per-eval-image", "100000", "--steps-per-eval-all-images", "100000",
            *settings, "llff-data", "--data", str(scene), "--downscale-factor", "1",
            log=work / "train.log",
        )  # fmt: skip
        config = work / "outputs/demo/nerf-qat/run/config.yml"
        export = work / "export-int8"
        print(f"[3/5] exporting int8 weights to {export}", flush=True)
        run("ns-export-int8", "--load-config", str(config), "--output-dir", str(export), log=work / "export.log")

        print("[4/5] evaluating the trained (fake-quantized) run and the int8 export", flush=True)
        results: Dict[str, Dict[str, float]] = {}
        for name, cfg in (("trained", config), ("int8", export / "config.yml")):
            out = work / f"eval-{name}.json"
            renders = work / f"renders-{name}"
            run("ns-eval", "--load-config", str(cfg), "--output-path", str(out), "--render-output-path",
                str(renders), log=work / f"eval-{name}.log")  # fmt: skip
            results[name] = json.loads(out.read_text())["results"]

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
            f"Renders (ground truth | coarse | fine): {work / 'renders-int8'}",
            f"Export: {export} (ns-eval / ns-render / ns-viewer --load-config {export / 'config.yml'})",
            f"Total time: {(time.time() - start) / 60:.1f} min on {device}",
        ]
        (work / "summary.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    tyro.cli(Demo).main()
