"""The seed paper's Tables 1 and 2 on fern, measured: fp32, QAT variants and nerfstudio's vanilla-nerf side by side.

    python scripts/benchmark.py --preset cpu      # fern images_16, narrow MLP; writes benchmarks/fern_cpu.*
    python scripts/benchmark.py --preset gpu      # fern images_8, the original architecture

Each variant is trained with ns-train on the same data, seed and step budget. QAT runs are exported with
ns-export-int8; ns-eval evaluates the trained run and the export on the held-out views (every 8th image).
Recorded per variant: PSNR, SSIM, LPIPS (when the AlexNet weights are cached, else marked unavailable), MLP weight
bytes (fp32 parameters vs the export file), train samples/s (nerfstudio's logged rays/s times MLP samples per
ray), eval rays/s. Results: <output>.json (every number, the command, the machine), <output>.md (tables, the
paper's rows quoted), <output>_view.png (a test view: ground truth, fp32, int8 export, error) and
<output>_size_psnr.png.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import torch
import tyro

from nerfqat_plugin.tools.runs import CommandFailed, machine, run, tool

REPO = Path(__file__).resolve().parents[1]
FERN = REPO.parent / "shared/data/nerf_llff_data/fern"


@dataclass(frozen=True)
class Preset:
    downscale_factor: int
    steps: int
    rays: int
    coarse_samples: int
    fine_samples: int
    num_layers: int
    layer_width: int
    skip_layer: int
    view_width: int


PRESETS: Dict[str, Preset] = {
    # 2-core CPU: narrow nerf-qat MLP; vanilla-nerf keeps its fixed 8x256 MLP (nerfstudio has no width flag)
    "cpu": Preset(16, 1200, 256, 32, 32, 4, 128, 2, 64),
    # one H100/H200: the original architecture and sampling
    "gpu": Preset(8, 1000, 1024, 64, 128, 8, 256, 4, 128),
}

VARIANTS: Dict[str, List[str]] = {
    "fp32": ["--pipeline.model.quant.enabled", "False"],
    "qat-w8a8-fused": [],
    "qat-w8a8-unfused": ["--pipeline.model.quant.fused", "False"],
    "qat-w4a8-fused": ["--pipeline.model.quant.weight-bits", "4"],
    "vanilla-nerf": [],
}
"""Flags on top of the preset; vanilla-nerf is nerfstudio's method run through nerfqat_plugin.offline."""

PAPER_TABLE1 = [("fused (paper, quoted)", 30.79), ("unfused (paper, quoted)", 24.59)]
PAPER_TABLE2 = [
    ("NeRF (paper, quoted)", 31.49, 0.899, 0.050, 4.78e6),
    ("NeRF-QAT (paper, quoted)", 30.56, 0.819, 0.114, 1.33e6),
]


@dataclass
class Benchmark:
    """Train, export and evaluate every variant on fern; write the JSON, the report and the figures."""

    preset: Literal["cpu", "gpu"] = "cpu"
    """cpu: images_16, 4x128 nerf-qat MLP; gpu: images_8, the original 8x256 MLP, 1024 rays, 64+128 samples."""
    data: Path = FERN
    """The fern scene (poses_bounds.npy and images_<factor>)."""
    steps: Optional[int] = None
    """Training steps of every variant (default: the preset's)."""
    variants: Tuple[str, ...] = tuple(VARIANTS)
    """Which variants to run, in order."""
    device: Optional[str] = None
    """cpu or cuda; default: cuda when available."""
    workdir: Path = Path("benchmark_runs")
    """Where runs, exports and logs go (each variant's folder is replaced)."""
    output: Optional[Path] = None
    """Output prefix for .json/.md/.png; default benchmarks/fern_<preset>."""
    seed: int = 42
    """Seed of every run (nerfstudio's machine.seed)."""
    report_only: bool = False
    """Rebuild <output>.md and the figures from an existing <output>.json and its runs (no training)."""

    def main(self) -> None:
        if self.report_only:
            out = (self.output or REPO / "benchmarks" / f"fern_{self.preset}").resolve()
            result = json.loads(out.with_suffix(".json").read_text())
            self._figures(out, result["rows"])
            out.with_suffix(".md").write_text(report(result, out))
            print(out.with_suffix(".md").read_text())
            return
        preset = PRESETS[self.preset]
        steps = self.steps or preset.steps
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if not (self.data / "poses_bounds.npy").exists():
            sys.exit(f"{self.data}: no poses_bounds.npy; pass --data with the fern folder")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            sys.exit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
        work = self.workdir.resolve()
        work.mkdir(parents=True, exist_ok=True)
        out = (self.output or REPO / "benchmarks" / f"fern_{self.preset}").resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        rows = []
        for i, name in enumerate(self.variants):
            print(f"[{i + 1}/{len(self.variants)}] {name} ({time.time() - start:.0f} s so far)", flush=True)
            try:
                rows.append(self._variant(name, preset, steps, device, work / name))
            except CommandFailed as err:
                print(f"  {name} failed: {err}", flush=True)
                rows.append({"variant": name, "error": str(err)})
            # after every variant, so a stopped run keeps what it measured
            self._figures(out, rows)
            self._write(out, rows, preset, steps, device, time.time() - start)
        print((out.with_suffix(".md")).read_text())

    # --- one variant ----------------------------------------------------------------------------------------------

    def _variant(self, name: str, p: Preset, steps: int, device: str, folder: Path) -> Dict[str, object]:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        vanilla = name == "vanilla-nerf"
        common = [
            "--machine.device-type", device, "--machine.seed", str(self.seed), "--vis", "tensorboard",
            "--output-dir", str(folder / "outputs"), "--experiment-name", name, "--timestamp", "run",
            "--max-num-iterations", str(steps), "--steps-per-save", str(steps),
            "--steps-per-eval-batch", str(10 * steps), "--steps-per-eval-image", str(10 * steps),
            "--steps-per-eval-all-images", str(10 * steps),
            "--pipeline.datamanager.train-num-rays-per-batch", str(p.rays),
            "--pipeline.model.num-coarse-samples", str(p.coarse_samples),
            "--pipeline.model.num-importance-samples", str(p.fine_samples),
        ]  # fmt: skip
        if vanilla:
            near, far = scene_bounds(self.data, p.downscale_factor)
            method = [sys.executable, "-m", "nerfqat_plugin.offline", "ns-train", "vanilla-nerf"]
            extra = ["--pipeline.model.collider-params", "near_plane", str(near), "far_plane", str(far)]
            ndc = "False"  # vanilla-nerf has no NDC: it samples the scene's near..far range in world space
        else:
            method = [tool("ns-train"), "nerf-qat"]
            extra = [
                "--pipeline.model.num-layers", str(p.num_layers), "--pipeline.model.layer-width", str(p.layer_width),
                "--pipeline.model.skip-layer", str(p.skip_layer), "--pipeline.model.view-width", str(p.view_width),
                "--optimizers.fields.scheduler.max-steps", str(steps), *VARIANTS[name],
            ]  # fmt: skip
            ndc = "True"
        dataparser = ["llff-data", "--data", str(self.data), "--downscale-factor", str(p.downscale_factor)]
        dataparser += ["--ndc", ndc]
        t0 = time.time()
        run([*method, *common, *extra, *dataparser], folder / "train.log")
        train_wall = time.time() - t0
        run_dir = folder / "outputs" / name / ("vanilla-nerf" if vanilla else "nerf-qat") / "run"
        config = run_dir / "config.yml"
        samples_per_ray = p.coarse_samples + (p.coarse_samples + p.fine_samples)
        rays_per_s = logged_rays_per_sec(run_dir)
        row: Dict[str, object] = {
            "variant": name,
            "train_wall_s": train_wall,
            "train_rays_per_s": rays_per_s,
            "train_samples_per_s": rays_per_s * samples_per_ray if rays_per_s else None,
            "run": str(config),
        }
        evaluator = [sys.executable, "-m", "nerfqat_plugin.offline", "ns-eval"] if vanilla else [tool("ns-eval")]
        row["trained"] = evaluate(evaluator, config, folder / "eval_trained.json", folder / "eval_trained.log")
        row["fp32_weight_bytes"] = mlp_fp32_bytes(run_dir)
        row["checkpoint_file_bytes"] = sum(f.stat().st_size for f in (run_dir / "nerfstudio_models").glob("*.ckpt"))
        if name.startswith("qat"):
            export = folder / "int8"
            run([tool("ns-export-int8"), "--load-config", str(config), "--output-dir", str(export)],
                folder / "export.log")  # fmt: skip
            row["export_file_bytes"] = (export / "model.safetensors").stat().st_size
            row["export"] = str(export / "config.yml")
            int8_config = export / "config.yml"
            row["int8"] = evaluate(evaluator, int8_config, folder / "eval_int8.json", folder / "eval_int8.log")
            row["int8_minus_trained_psnr_db"] = row["int8"]["psnr"] - row["trained"]["psnr"]  # type: ignore[index]
        return row

    # --- outputs --------------------------------------------------------------------------------------------------

    def _write(self, out: Path, rows, p: Preset, steps: int, device: str, seconds: float) -> None:
        result = {
            "command": "python " + " ".join(sys.argv),
            "machine": machine(device),
            "preset": self.preset,
            "settings": {**p.__dict__, "steps": steps, "seed": self.seed, "data": str(self.data)},
            "wall_s": seconds,
            "rows": rows,
        }
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(report(result, out))

    _view_done = False

    def _figures(self, out: Path, rows) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ok = {r["variant"]: r for r in rows if "error" not in r}
        if "fp32" in ok and "qat-w8a8-fused" in ok and not self._view_done:
            self._view_done = True
            try:
                gt, fp32 = render_test_view(Path(ok["fp32"]["run"]))
                _, int8 = render_test_view(Path(ok["qat-w8a8-fused"]["export"]))
                err = (int8 - gt).abs().mean(-1)
                fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
                titles = ("ground truth", "fp32", "int8 export (w8a8 fused)", "|int8 - ground truth| (mean RGB)")
                for ax, img, title in zip(axes, (gt, fp32, int8, err), titles, strict=True):
                    if img.dim() == 2:
                        ax.imshow(img.numpy(), cmap="magma", vmin=0, vmax=max(img.max().item(), 1e-6))
                    else:
                        ax.imshow(img.numpy())
                    ax.set_title(title)
                    ax.axis("off")
                fig.tight_layout()
                fig.savefig(out.parent / f"{out.name}_view.png", dpi=80)
                plt.close(fig)
            except Exception as err:  # a figure must not lose the measured numbers
                print(f"test-view figure failed: {err}", flush=True)
        points = []  # (MB, PSNR, label): int8 files of the QAT runs, fp32 weights of the fp32 baselines
        for r in ok.values():
            if "int8" in r:
                points.append((r["export_file_bytes"] / 1e6, r["int8"]["psnr"], f"{r['variant']} (int8 file)"))
            elif not r["variant"].startswith("qat"):
                points.append((r["fp32_weight_bytes"] / 1e6, r["trained"]["psnr"], f"{r['variant']} (fp32 weights)"))
        if points:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            markers = "osD^vP*X"
            for i, (size, psnr, label) in enumerate(points):
                ax.scatter(
                    size, psnr, marker=markers[i % len(markers)], s=50, label=f"{label}: {size:.3f} MB, {psnr:.2f} dB"
                )
            ax.set_xscale("log")
            ax.set_xlabel("MLP weights (MB, log scale)")
            ax.set_ylabel("held-out PSNR (dB)")
            ax.set_title(f"fern, {self.preset} preset: size vs quality")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="best")
            fig.tight_layout()
            fig.savefig(out.parent / f"{out.name}_size_psnr.png", dpi=80)
            plt.close(fig)


def evaluate(evaluator: List[str], config: Path, output: Path, log: Path) -> Dict[str, Optional[float]]:
    run([*evaluator, "--load-config", str(config), "--output-path", str(output)], log)
    results = json.loads(output.read_text())["results"]
    lpips = results.get("lpips", results.get("fine_lpips"))
    if lpips is not None and math.isnan(lpips):
        lpips = None
    return {
        "psnr": results["psnr"],
        "ssim": results.get("ssim", results.get("fine_ssim")),
        "lpips": lpips,
        "eval_rays_per_s": results.get("num_rays_per_sec"),
    }


def logged_rays_per_sec(run_dir: Path) -> Optional[float]:
    """Median of nerfstudio's logged 'Train Rays / Sec' over the second half of training."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    if "Train Rays / Sec" not in acc.Tags().get("scalars", []):
        return None
    events = acc.Scalars("Train Rays / Sec")
    half = [e.value for e in events if e.step >= events[-1].step / 2] or [e.value for e in events]
    return statistics.median(half)


def mlp_fp32_bytes(run_dir: Path) -> int:
    """fp32 bytes of the coarse and fine MLP parameters in the run's checkpoint (no encodings, no LPIPS)."""
    ckpt = max((run_dir / "nerfstudio_models").glob("*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["pipeline"]
    fields = ("field_coarse", "field_fine")
    keep = [v for k, v in state.items() if any(f in k for f in fields) and k.endswith(("weight", "bias"))]
    return sum(v.numel() * 4 for v in keep)


def scene_bounds(data: Path, factor: int) -> Tuple[float, float]:
    from nerfqat_plugin.llff import LLFFDataParserConfig

    meta = LLFFDataParserConfig(data=data, downscale_factor=factor, ndc=False).setup().get_dataparser_outputs("train")
    return float(meta.metadata["near_plane"]), float(meta.metadata["far_plane"])


def render_test_view(config: Path):
    """(ground truth, render) of the first held-out view, [H, W, 3] in [0, 1], on the CPU or GPU."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    dm = pipeline.datamanager
    camera, batch = next(iter(dm.fixed_indices_eval_dataloader))
    with torch.no_grad():
        outputs = pipeline.model.get_outputs_for_camera(camera.to(pipeline.device))
    gt = batch["image"][..., :3].float().cpu()
    return gt, outputs["rgb"].clamp(0, 1).float().cpu()


def _fmt(v, spec: str, missing: str = "n/a") -> str:
    return missing if v is None else format(v, spec)


def report(result: Dict[str, object], out: Path) -> str:
    s = result["settings"]
    rows = {r["variant"]: r for r in result["rows"] if "error" not in r}  # type: ignore[union-attr]
    lines = [
        f"# fern benchmark, {result['preset']} preset",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {json.dumps(result['machine'])}  ",
        f"Settings: fern images_{s['downscale_factor']}, {s['steps']} steps, {s['rays']} rays per batch, "  # type: ignore[index]
        f"{s['coarse_samples']}+{s['fine_samples']} samples, nerf-qat MLP {s['num_layers']}x{s['layer_width']} "  # type: ignore[index]
        f"(skip {s['skip_layer']}, view {s['view_width']}), vanilla-nerf its fixed 8x256, seed {s['seed']}; "  # type: ignore[index]
        f"held-out: every 8th image. Total wall time {result['wall_s'] / 60:.1f} min.",  # type: ignore[operator]
        "",
        "Our rows are measured by this script at the committed code; the paper's rows are quoted from the seed paper",
        "(fern, 1/8 resolution, 50k+ steps on a GPU), so compare shapes (differences between rows), not absolutes.",
        "",
        "## Table 1: fused vs unfused Linear+ReLU (w8a8)",
        "",
        "| variant | PSNR trained (fake-quant) | PSNR int8 export | int8 - trained |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in ("qat-w8a8-fused", "qat-w8a8-unfused"):
        if name in rows:
            r = rows[name]
            lines.append(
                f"| {name} (ours) | {r['trained']['psnr']:.3f} | {r['int8']['psnr']:.3f} | "
                f"{r['int8_minus_trained_psnr_db']:+.4f} |"
            )
    for label, psnr in PAPER_TABLE1:
        lines.append(f"| {label} | | {psnr:.2f} | |")
    lines += [
        "",
        "## Table 2: quality and size",
        "",
        "| model | PSNR | SSIM | LPIPS | MLP weights (bytes) | train samples/s | eval rays/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        t = r["trained"]
        label = f"{name} (ours{', fake-quant' if name.startswith('qat') else ''})"
        lines.append(
            f"| {label} | {t['psnr']:.3f} | {t['ssim']:.3f} | {_fmt(t['lpips'], '.3f', 'unavailable')} | "
            f"{r['fp32_weight_bytes']:,} (fp32) | {_fmt(r['train_samples_per_s'], ',.0f')} | "
            f"{_fmt(t['eval_rays_per_s'], ',.0f')} |"
        )
        if "int8" in r:
            q = r["int8"]
            lines.append(
                f"| {name} (ours, int8 export) | {q['psnr']:.3f} | {q['ssim']:.3f} | "
                f"{_fmt(q['lpips'], '.3f', 'unavailable')} | {r['export_file_bytes']:,} (file) | | "
                f"{_fmt(q['eval_rays_per_s'], ',.0f')} |"
            )
    for label, psnr, ssim, lp, size in PAPER_TABLE2:
        lines.append(f"| {label} | {psnr:.2f} | {ssim:.3f} | {lp:.3f} | {size:,.0f} | | |")
    failed = [r for r in result["rows"] if "error" in r]  # type: ignore[union-attr]
    for r in failed:
        lines += ["", f"**{r['variant']} failed**: {r['error'].splitlines()[0]}"]
    if "fp32" in rows and "qat-w8a8-fused" in rows:
        lines.append("")
        for name in ("qat-w8a8-fused", "qat-w8a8-unfused", "qat-w4a8-fused"):
            if name in rows:
                d = rows[name]["trained"]["psnr"] - rows["fp32"]["trained"]["psnr"]
                lines.append(f"{name} minus fp32: {d:+.4f} dB (trained runs, same seed and steps).  ")
        loss = rows["fp32"]["trained"]["psnr"] - rows["qat-w8a8-fused"]["trained"]["psnr"]
        gaps = [abs(r["int8_minus_trained_psnr_db"]) for r in rows.values() if "int8_minus_trained_psnr_db" in r]
        lines.append(
            f"Checks: QAT w8a8 fused loses {loss:.4f} dB against fp32 "
            f"(limit 0.1: {'ok' if loss <= 0.1 else 'NOT MET'}); "
            f"largest |int8 export - fake-quantized| {max(gaps):.5f} dB (limit 0.02: "
            f"{'ok' if max(gaps) <= 0.02 else 'NOT MET'})."
        )
    lines += [
        "",
        "LPIPS is 'unavailable' where torchvision's AlexNet weights are not in the torch hub cache (no download).",
        "MLP weights: fp32 = 4 bytes per coarse+fine MLP parameter in the checkpoint; file = the int8 export's size.",
        "",
        f"![test view]({out.name}_view.png)",
        "",
        f"![size vs PSNR]({out.name}_size_psnr.png)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    tyro.cli(Benchmark).main()
