"""The seed paper's Tables 1 and 2 on fern, measured: fp32, QAT variants down to 2-bit weights and nerfstudio's
vanilla-nerf side by side, compared at equal steps.

    python scripts/benchmark.py --preset cpu      # fern images_16, 4x128 MLP, variants one after another
    python scripts/benchmark.py --preset gpu      # fern images_8, the original 8x256 MLP, all variants at once on
                                                  # one GPU for --train-seconds, then compared at a common step
    python scripts/benchmark.py --preset tiny --data SCENE --downscale-factor 4   # a dry run of the whole harness

Every variant is trained with ns-train on the same data, seed and schedule, keeping a checkpoint every
``save_every`` steps. The runs are then compared at the largest checkpoint step that all of them saved (runs trained
at the same time on one GPU do not reach the same step): its config is copied with ``load_step`` set, the QAT runs
are exported with ns-export-int8 at that step, and ns-eval evaluates each run and each export on the held-out views
(every 8th image). Recorded per variant: PSNR, SSIM, LPIPS (when the AlexNet weights are cached, else marked
unavailable), MLP weight bytes (fp32 parameters vs the export file), train samples/s (nerfstudio's logged rays/s
times MLP samples per ray; shared GPU when trained at the same time), eval rays/s, steps reached and wall time.
Results: <output>.json (every number, the command, the machine), <output>.md (tables, the paper's rows quoted),
<output>_view.png (a test view per variant) and <output>_size_psnr.png (the size-quality frontier).
"""

from __future__ import annotations

import concurrent.futures
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import torch
import tyro
from benchlib.figures import frontier_figure, view_figure
from benchlib.reading import compared_step
from benchlib.report import report
from benchlib.runner import Run, Training, train_all
from benchlib.variants import FERN_PRESETS, VARIANTS

from nerfqat_plugin.quant import QuantConfig
from nerfqat_plugin.tools.runs import machine

REPO = Path(__file__).resolve().parents[1]
FERN = REPO.parent / "shared/data/nerf_llff_data/fern"


@dataclass
class Benchmark:
    """Train, export and evaluate every variant on fern; write the JSON, the report and the figures."""

    preset: Literal["cpu", "gpu", "tiny"] = "cpu"
    """cpu: images_16, 4x128 MLP, one run after another; gpu: images_8, the original 8x256 MLP, 1024 rays,
    64+128 samples, all runs at once for --train-seconds; tiny: a seconds-long dry run of the harness."""
    data: Path = FERN
    """The LLFF scene (poses_bounds.npy and images_<factor>)."""
    downscale_factor: Optional[int] = None
    """images_<factor> to read (default: the preset's)."""
    steps: Optional[int] = None
    """Most training steps of every variant (default: the preset's)."""
    save_every: Optional[int] = None
    """Checkpoint interval (default: the preset's)."""
    train_seconds: Optional[float] = None
    """Wall time for training before runs are stopped (default: the preset's; 0: no limit)."""
    variants: Optional[Tuple[str, ...]] = None
    """Which variants to run (default: the preset's), from benchlib.variants.VARIANTS."""
    device: Optional[str] = None
    """cpu or cuda; default: cuda when available."""
    workdir: Path = Path("benchmark_runs")
    """Where runs, exports and logs go (each variant's folder is replaced)."""
    output: Optional[Path] = None
    """Output prefix for .json/.md/.png; default benchmarks/fern_<preset>."""
    seed: int = 42
    """Seed of every run (nerfstudio's machine.seed)."""
    report_only: bool = False
    """Rebuild <output>.md and the size plot from an existing <output>.json (no training)."""
    reuse_trained: bool = False
    """Reuse the runs in --workdir that already saved their last step (trained by an earlier invocation with the same
    settings, e.g. before more variants were added) and train only the others; then evaluate them all."""
    evaluate_only: bool = False
    """Compare and evaluate the runs already in --workdir, trained by an earlier invocation with the same settings
    (one that stopped before its evaluations), instead of training them again."""

    def main(self) -> None:
        out = (self.output or REPO / "benchmarks" / f"fern_{self.preset}").resolve()
        if self.report_only:
            result = json.loads(out.with_suffix(".json").read_text())
            frontier_figure(out, result)
            out.with_suffix(".md").write_text(report(result, out))
            print(out.with_suffix(".md").read_text())
            return
        p = FERN_PRESETS[self.preset]
        factor = self.downscale_factor or p.downscale_factor
        steps, save_every = self.steps or p.steps, self.save_every or p.save_every
        seconds = p.train_seconds if self.train_seconds is None else (self.train_seconds or None)
        names = tuple(self.variants or p.variants)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if not (self.data / "poses_bounds.npy").exists():
            sys.exit(f"{self.data}: no poses_bounds.npy; pass --data with an LLFF scene folder")
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            sys.exit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
        work = self.workdir.resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        training = Training(self.data, factor, p.model, steps, save_every, device, self.seed)
        runs = [Run(VARIANTS[name], work / name, training) for name in names]
        reused = [r for r in runs if self.evaluate_only or (self.reuse_trained and r.finished_before(steps))]
        for r in reused:
            r.reuse()
        train_all([r for r in runs if r not in reused], p.parallel, seconds)
        trained = [r for r in runs if r.error is None]
        step, why = compared_step({r.name: r.saved_steps() for r in trained}) if trained else (None, "no run trained")
        print(f"comparing at step {step}: {why}", flush=True)
        if step is not None:
            workers = len(trained) if p.parallel else 1
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(lambda r: r.evaluate(step), trained))
        result = {
            "command": shlex.join(["python", *sys.argv]),
            "machine": machine(device),
            "preset": self.preset,
            "settings": {
                "downscale_factor": factor,
                "steps": steps,
                "save_every": save_every,
                "train_seconds": seconds,
                "parallel": p.parallel,
                **asdict(p.model),
                "quant_start_step": QuantConfig().quant_start_step
                if p.model.quant_start_step is None
                else p.model.quant_start_step,
                "seed": self.seed,
                "data": str(self.data),
            },
            "compared_step": step,
            "compared_step_why": why,
            "evaluated_earlier_runs": self.evaluate_only,
            "reused_runs": [r.name for r in reused] if self.reuse_trained else [],
            "wall_s": time.time() - start,
            "rows": [r.row() for r in runs],
        }
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        view_figure(out, result)
        frontier_figure(out, result)
        out.with_suffix(".md").write_text(report(result, out))
        print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    tyro.cli(Benchmark).main()
