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
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import torch
import tyro
import yaml

from nerfqat_plugin.quant import QuantConfig
from nerfqat_plugin.tools.runs import (
    PRESETS,
    CommandFailed,
    Preset,
    command_env,
    machine,
    machine_line,
    offline,
    run,
    tool,
    train_flags,
)

REPO = Path(__file__).resolve().parents[1]
FERN = REPO.parent / "shared/data/nerf_llff_data/fern"


def _quant(**flags: str) -> List[str]:
    """nerf-qat's ``--pipeline.model.quant.*`` flags."""
    return [item for key, value in flags.items() for item in (f"--pipeline.model.quant.{key.replace('_', '-')}", value)]


VARIANTS: Dict[str, List[str]] = {
    "fp32": _quant(enabled="False"),
    "qat-w8a8-fused": [],
    "qat-w8a8-unfused": _quant(fused="False"),
    "qat-w4a8-fused": _quant(weight_bits="4"),
    "qat-w3a8-fused": _quant(weight_bits="3"),
    "qat-w2a8-fused": _quant(weight_bits="2"),
    "qat-w8a8-fused-from0": _quant(quant_start_step="0"),
    "qat-w8a8-unfused-from0": _quant(fused="False", quant_start_step="0"),
    "vanilla-nerf": [],
}
"""Flags on top of the preset; vanilla-nerf is nerfstudio's method run through nerfqat_plugin.offline. The
'-from0' variants fake-quantize from the first step, as stock eager-mode QAT does (the paper's Table 1 setting)."""


@dataclass(frozen=True)
class FernPreset:
    """How a benchmark trains: data, steps, checkpoints, the network, and whether runs share the device."""

    downscale_factor: int
    steps: int
    """Most steps a run trains (runs may be stopped earlier by ``train_seconds``)."""
    save_every: int
    """Checkpoint interval; every checkpoint is kept, so runs can be compared at a common step."""
    model: Preset
    parallel: bool
    """Train (and evaluate) all variants at once: one GPU is mostly idle with a single 1024-ray run."""
    train_seconds: Optional[float]
    """Wall time for training, after which runs still going are stopped (None: no limit)."""
    variants: Tuple[str, ...]


FERN_PRESETS: Dict[str, FernPreset] = {
    "cpu": FernPreset(
        16,
        1200,
        1200,
        replace(PRESETS["cpu"], sampler="hierarchical"),  # the paper's sampler, whatever nerf-qat's default
        False,
        None,
        (
            "fp32",
            "qat-w8a8-fused",
            "qat-w8a8-unfused",
            "qat-w4a8-fused",
            "qat-w3a8-fused",
            "qat-w2a8-fused",
            "vanilla-nerf",
        ),
    ),  # fmt: skip
    # one H100/H200 in a 10-minute slot: about 5 minutes of training, then exports and evaluations side by side
    "gpu": FernPreset(8, 50000, 250, replace(PRESETS["gpu"], sampler="hierarchical"), True, 300.0, tuple(VARIANTS)),
    # the harness end to end in seconds (tests): two variants at once on a tiny scene
    "tiny": FernPreset(
        4,
        6,
        2,
        replace(PRESETS["tiny"], quant_start_step=2, sampler="hierarchical"),
        True,
        None,
        ("fp32", "qat-w8a8-fused"),
    ),  # fmt: skip
}

PAPER_TABLE1 = [("fused (paper, quoted)", 30.79), ("unfused (paper, quoted)", 24.59)]
PAPER_TABLE2 = [
    ("NeRF (paper, quoted)", 31.49, 0.899, 0.050, 4.78e6),
    ("NeRF-QAT (paper, quoted)", 30.56, 0.819, 0.114, 1.33e6),
]
VIEW_VARIANTS = ("fp32", "qat-w8a8-fused", "qat-w4a8-fused", "qat-w2a8-fused")
"""The renders of the test-view figure (the QAT ones from their int8 exports)."""
LOW_BIT_LIMIT_DB = 0.5
"""Largest PSNR loss against fp32 accepted for 3- and 2-bit weights."""


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
    """Which variants to run (default: the preset's), from VARIANTS."""
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
        runs = [Run(name, work / name, self, p.model, factor, steps, save_every, device) for name in names]
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


# --- one variant ---------------------------------------------------------------------------------------------------


class Run:
    """One variant: its training process, checkpoints, and the evaluations at the compared step."""

    def __init__(
        self,
        name: str,
        folder: Path,
        bench: Benchmark,
        model: Preset,
        factor: int,
        steps: int,
        save_every: int,
        device: str,
    ):
        self.name, self.folder, self.model, self.device = name, folder, model, device
        self.vanilla = name == "vanilla-nerf"
        self.qat = name.startswith("qat")
        self.method = "vanilla-nerf" if self.vanilla else "nerf-qat"
        self.run_dir = folder / "outputs" / name / self.method / "run"
        self.error: Optional[str] = None
        self.train_wall_s: Optional[float] = None
        self.train_window: Optional[Tuple[float, float]] = None
        """Unix times the training process started and ended."""
        self.results: Dict[str, object] = {}
        flags = train_flags(device, folder / "outputs", name, steps, model, self.method, "run", bench.seed, save_every)
        flags += ["--save-only-latest-checkpoint", "False"]
        data = ["llff-data", "--data", str(bench.data), "--downscale-factor", str(factor)]
        if self.vanilla:
            near, far = scene_bounds(bench.data, factor)
            # vanilla-nerf has no NDC: it samples the scene's near..far range in world space
            extra = ["--pipeline.model.collider-params", "near_plane", str(near), "far_plane", str(far)]
            self.cmd = [
                sys.executable,
                "-m",
                "nerfqat_plugin.offline",
                "ns-train",
                *flags,
                *extra,
                *data,
                "--ndc",
                "False",
            ]
        else:
            schedule = ["--optimizers.fields.scheduler.max-steps", str(steps)]
            self.cmd = [tool("ns-train"), *flags, *schedule, *VARIANTS[name], *data, "--ndc", "True"]

    def start(self) -> subprocess.Popen:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        self._log = open(self.folder / "train.log", "w")
        self._started = time.time()
        # a session of its own, so that stopping it also stops its dataloader workers
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=command_env(), start_new_session=True
        )
        return self.proc

    def finished(self, stopped: bool) -> None:
        """Record how the training process ended (``stopped``: by the wall-time limit)."""
        self.train_wall_s = time.time() - self._started
        self.train_window = (self._started, time.time())
        (self.folder / "train_window.json").write_text(json.dumps(self.train_window))
        self._log.close()
        if self.proc.returncode != 0 and not stopped:
            tail = "".join((self.folder / "train.log").read_text(errors="replace").splitlines(True)[-15:])
            self.error = f"ns-train exited {self.proc.returncode}, see {self.folder / 'train.log'}:\n{tail}"
        elif not self.saved_steps():
            self.error = f"no checkpoint saved before the run stopped, see {self.folder / 'train.log'}"

    def finished_before(self, steps: int) -> bool:
        """Whether an earlier invocation left this run with its last step saved."""
        saved = self.saved_steps()
        return bool(saved) and saved[-1] >= steps - 1

    def reuse(self) -> None:
        """Take the run as an earlier invocation left it: its checkpoints, and its training window (recorded, or
        else the first and last of nerfstudio's logged events)."""
        window = self.folder / "train_window.json"
        if window.is_file():
            self.train_window = tuple(json.loads(window.read_text()))  # type: ignore[assignment]
        elif self.saved_steps():
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            acc = EventAccumulator(str(self.run_dir))
            acc.Reload()
            times = [e.wall_time for tag in acc.Tags().get("scalars", []) for e in acc.Scalars(tag)]
            self.train_window = (min(times), max(times)) if times else None
        if self.train_window is not None:
            self.train_wall_s = self.train_window[1] - self.train_window[0]
        if not self.saved_steps():
            self.error = f"no checkpoint in {self.run_dir} to evaluate (train it first)"

    def saved_steps(self) -> List[int]:
        """Steps of the complete checkpoints (a run stopped while saving leaves a file without its zip directory)."""
        ckpts = (self.run_dir / "nerfstudio_models").glob("step-*.ckpt")
        return sorted(int(p.stem.split("-")[1]) for p in ckpts if zipfile.is_zipfile(p))

    def evaluate(self, step: int) -> None:
        """ns-eval of the run at ``step``; for QAT runs also ns-export-int8 at that step and ns-eval of the export."""
        try:
            config = config_at_step(self.run_dir / "config.yml", step)
            self.results["trained"] = self._eval(config, "trained")
            if self.qat:
                export = self.folder / "int8"
                run([tool("ns-export-int8"), "--load-config", config, "--output-dir", export, "--overwrite"],
                    self.folder / "export.log")  # fmt: skip
                self.results["export_file_bytes"] = (export / "model.safetensors").stat().st_size
                self.results["export"] = str(export / "config.yml")
                self.results["int8"] = self._eval(export / "config.yml", "int8")
        except CommandFailed as err:
            self.error = str(err)

    def _eval(self, config: Path, name: str) -> Dict[str, Optional[float]]:
        output = self.folder / f"eval_{name}.json"
        command = ["ns-eval", "--load-config", config, "--output-path", output]
        if self.vanilla:
            offline(*command, log=self.folder / f"eval_{name}.log")
        else:
            run([tool(command[0]), *command[1:]], self.folder / f"eval_{name}.log")
        results = json.loads(output.read_text())["results"]
        lpips = results.get("lpips", results.get("fine_lpips"))
        return {
            "psnr": results["psnr"],
            "ssim": results.get("ssim", results.get("fine_ssim")),
            "lpips": None if lpips is None or math.isnan(lpips) else lpips,
            "eval_rays_per_s": results.get("num_rays_per_sec"),
        }

    def row(self) -> Dict[str, object]:
        row: Dict[str, object] = {"variant": self.name, "flags": VARIANTS[self.name]}
        if self.error is not None:
            row["error"] = self.error
        steps = self.saved_steps()
        rays_per_s = logged_rays_per_sec(self.run_dir) if steps else None
        row.update(
            steps_saved=steps,
            train_wall_s=self.train_wall_s,
            train_window_unix_s=self.train_window,
            train_rays_per_s=rays_per_s,
            train_samples_per_s=rays_per_s * self.model.mlp_samples_per_ray if rays_per_s else None,
            run=str(self.run_dir / "config.yml"),
        )
        if steps:
            row["fp32_weight_bytes"] = mlp_fp32_bytes(self.run_dir)
        row.update(self.results)
        if "int8" in row and "trained" in row:
            row["int8_minus_trained_psnr_db"] = row["int8"]["psnr"] - row["trained"]["psnr"]  # type: ignore[index]
        return row


def train_all(runs: Sequence[Run], parallel: bool, seconds: Optional[float]) -> None:
    """Train the runs, all at once or one after another; stop those still going after ``seconds`` in all."""
    deadline = None if seconds is None else time.time() + seconds
    pending = list(runs)
    active: List[Run] = []
    while pending or active:
        while pending and (parallel or not active):
            r = pending.pop(0)
            print(f"[train] {r.name}", flush=True)
            r.start()
            active.append(r)
        time.sleep(1.0)
        for r in list(active):
            stop = deadline is not None and time.time() > deadline
            if r.proc.poll() is None and stop:
                stop_process(r.proc)
            if r.proc.poll() is not None:
                r.finished(stopped=stop)
                active.remove(r)
                print(f"[train] {r.name}: steps saved {r.saved_steps()[-3:]}{' (stopped)' if stop else ''}", flush=True)


def stop_process(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGINT the process group (a training run keeps its saved checkpoints), then SIGKILL after ``grace``."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def compared_step(saved: Dict[str, List[int]]) -> Tuple[Optional[int], str]:
    """The largest checkpoint step every run saved, and why (runs stopped at different steps are compared where
    all of them were)."""
    common = set.intersection(*(set(steps) for steps in saved.values())) if saved else set()
    last = {name: steps[-1] for name, steps in saved.items() if steps}
    if not common:
        return None, f"no checkpoint step saved by every run (last steps: {last})"
    step = max(common)
    if len(set(last.values())) == 1:
        return step, f"every run finished at step {step}"
    slowest = min(last, key=lambda k: last[k])
    return step, f"the largest checkpoint step all runs saved; runs reached {last} (slowest: {slowest})"


def config_at_step(config: Path, step: int) -> Path:
    """A copy of a run's config.yml beside it that loads the checkpoint of ``step``."""
    trainer_config = yaml.load(config.read_text(), Loader=yaml.Loader)
    trainer_config.load_step = step
    copy = config.with_name(f"config-step{step}.yml")
    copy.write_text(yaml.dump(trainer_config))
    return copy


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


# --- figures -------------------------------------------------------------------------------------------------------


def render_test_view(config: Path):
    """(ground truth, render) of the first held-out view, [H, W, 3] in [0, 1], on the CPU or GPU."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    camera, batch = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))
    with torch.no_grad():
        outputs = pipeline.model.get_outputs_for_camera(camera.to(pipeline.device))
    return batch["image"][..., :3].float().cpu(), outputs["rgb"].clamp(0, 1).float().cpu()


def view_figure(out: Path, result: Dict) -> None:
    """Ground truth and each of VIEW_VARIANTS (int8 exports for QAT) on the first held-out view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["variant"]: r for r in result["rows"] if "trained" in r}
    step = result["compared_step"]
    # QAT variants from their int8 exports, the others from their run at the compared step
    shown = [
        (
            n,
            Path(rows[n]["export"])
            if "export" in rows[n]
            else Path(rows[n]["run"]).with_name(f"config-step{step}.yml"),
        )
        for n in VIEW_VARIANTS
        if n in rows
    ]
    if not shown:
        return
    try:
        images, gt = [], None
        for name, config in shown:
            gt, image = render_test_view(config)
            psnr = rows[name]["int8" if "int8" in rows[name] else "trained"]["psnr"]
            images.append((f"{name}{' (int8)' if 'int8' in rows[name] else ''}: {psnr:.2f} dB", image))
        fig, axes = plt.subplots(1, len(images) + 1, figsize=(4 * (len(images) + 1), 3.6))
        for ax, (title, image) in zip(axes, [("ground truth", gt), *images], strict=True):
            ax.imshow(image.numpy())
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(f"fern, {result['preset']} preset, step {result['compared_step']}: first held-out view")
        fig.tight_layout()
        fig.savefig(out.parent / f"{out.name}_view.png", dpi=80)
        plt.close(fig)
    except Exception as err:  # a figure must not lose the measured numbers
        print(f"test-view figure failed: {err}", flush=True)


def frontier_figure(out: Path, result: Dict) -> None:
    """PSNR against model file size: the int8 exports by weight bits, fp32 weights, and the paper's rows (quoted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "trained" in r]
    fused = sorted((r for r in rows if "int8" in r and "fused" in r["variant"] and "unfused" not in r["variant"]),
                   key=lambda r: r["export_file_bytes"])  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if fused:
        ax.plot([r["export_file_bytes"] / 1e6 for r in fused], [r["int8"]["psnr"] for r in fused], "o-",
                label="nerf-qat int8 file, fused (weight bits)")  # fmt: skip
        for r in fused:
            ax.annotate(r["variant"].split("-")[1], (r["export_file_bytes"] / 1e6, r["int8"]["psnr"]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))  # fmt: skip
    for r in rows:
        if "int8" in r and r not in fused:
            ax.scatter(r["export_file_bytes"] / 1e6, r["int8"]["psnr"], marker="x", label=f"{r['variant']} (int8)")
        elif not r["variant"].startswith("qat"):
            ax.scatter(r["fp32_weight_bytes"] / 1e6, r["trained"]["psnr"], marker="s", label=f"{r['variant']} (fp32)")
    for label, psnr, _, _, size in PAPER_TABLE2:
        ax.scatter(size / 1e6, psnr, marker="*", s=90, label=f"{label}, 50k+ steps")
    ax.set_xscale("log")
    ax.set_xlabel("MLP weights (MB, log scale)")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.set_title(f"fern, {result['preset']} preset, step {result.get('compared_step')}: size vs quality")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out.parent / f"{out.name}_size_psnr.png", dpi=80)
    plt.close(fig)


# --- report --------------------------------------------------------------------------------------------------------


def _fmt(v, spec: str, missing: str = "n/a") -> str:
    return missing if v is None else format(v, spec)


def report(result: Dict[str, object], out: Path) -> str:
    s = result["settings"]
    rows = {r["variant"]: r for r in result["rows"] if "trained" in r}  # type: ignore[union-attr]
    step = result["compared_step"]
    limit = f"{s['train_seconds']:.0f} s of training, " if s.get("train_seconds") else ""  # type: ignore[union-attr]
    together = "side by side" if s["parallel"] else "one after another"  # type: ignore[index]
    lines = [
        f"# fern benchmark, {result['preset']} preset",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine_line(result['machine'])}  ",  # type: ignore[arg-type]
        f"Settings: fern images_{s['downscale_factor']}, up to {s['steps']} steps ({limit}checkpoint every "  # type: ignore[index]
        f"{s['save_every']}), {s['rays']} rays per batch, {s['coarse_samples']}+{s['fine_samples']} samples, "  # type: ignore[index]
        f"nerf-qat MLP {s['num_layers']}x{s['layer_width']} (skip {s['skip_layer']}, view {s['view_width']}), "  # type: ignore[index]
        f"vanilla-nerf its fixed 8x256, seed {s['seed']}, runs {together}; "  # type: ignore[index]
        f"held-out: every 8th image. Total wall time {result['wall_s'] / 60:.1f} min.  ",  # type: ignore[operator]
        f"**Compared at step {step}**: {result['compared_step_why']}."
        + (
            "  \nThe runs were trained by an earlier invocation with these settings (it stopped before evaluating) "
            "and evaluated by this one (`--evaluate-only`); train wall times from nerfstudio's event log."
            if result.get("evaluated_earlier_runs")
            else ""
        )
        + (
            f"  \nReused as an earlier invocation with these settings trained them (`--reuse-trained`): "
            f"{', '.join(result['reused_runs'])}; train wall times from that invocation."  # type: ignore[arg-type]
            if result.get("reused_runs")
            else ""
        ),
        "",
        "Our rows are measured by this script at the committed code; the paper's rows are quoted from the seed paper",
        "(fern, 1/8 resolution, 50k+ steps on a GPU), so compare shapes (differences between rows), not absolutes.",
        "",
        "## Table 1: fused vs unfused Linear+ReLU (w8a8)",
        "",
        "| variant | QAT from step | PSNR trained (fake-quant) | PSNR int8 export | int8 - trained |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("qat-w8a8-fused", "qat-w8a8-unfused", "qat-w8a8-fused-from0", "qat-w8a8-unfused-from0"):
        if name in rows and "int8" in rows[name]:
            r = rows[name]
            start = "0" if name.endswith("from0") else str(s.get("quant_start_step", "default"))  # type: ignore[union-attr]
            lines.append(
                f"| {name} (ours) | {start} | {r['trained']['psnr']:.3f} | {r['int8']['psnr']:.3f} | "
                f"{r['int8_minus_trained_psnr_db']:+.4f} |"
            )
    for label, psnr in PAPER_TABLE1:
        lines.append(f"| {label} | 0 (stock eager QAT) | | {psnr:.2f} | |")
    lines += _table1_answer(rows)
    lines += [
        "",
        "## Table 2: quality and size",
        "",
        "| model | PSNR | SSIM | LPIPS | MLP weights (bytes) | train samples/s | eval rays/s | last step saved "
        "| train wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        t = r["trained"]
        label = f"{name} (ours{', fake-quant' if name.startswith('qat') else ''})"
        last = r["steps_saved"][-1] if r.get("steps_saved") else None
        lines.append(
            f"| {label} | {t['psnr']:.3f} | {t['ssim']:.3f} | {_fmt(t['lpips'], '.3f', 'unavailable')} | "
            f"{r['fp32_weight_bytes']:,} (fp32) | {_fmt(r['train_samples_per_s'], ',.0f')} | "
            f"{_fmt(t['eval_rays_per_s'], ',.0f')} | {_fmt(last, 'd')} | {_fmt(r.get('train_wall_s'), '.0f')} |"
        )
        if "int8" in r:
            q = r["int8"]
            lines.append(
                f"| {name} (ours, int8 export) | {q['psnr']:.3f} | {q['ssim']:.3f} | "
                f"{_fmt(q['lpips'], '.3f', 'unavailable')} | {r['export_file_bytes']:,} (file) | | "
                f"{_fmt(q['eval_rays_per_s'], ',.0f')} | | |"
            )
    for label, psnr, ssim, lp, size in PAPER_TABLE2:
        lines.append(f"| {label} | {psnr:.2f} | {ssim:.3f} | {lp:.3f} | {size:,.0f} | | | | |")
    failed = [r for r in result["rows"] if "error" in r]  # type: ignore[union-attr]
    for r in failed:
        lines += ["", f"**{r['variant']} failed**: {r['error'].splitlines()[0]}"]
    lines += _frontier(rows)
    lines += _checks(rows)
    lines += [
        "",
        "LPIPS is 'unavailable' where torchvision's AlexNet weights are not in the torch hub cache (no download).",
        "MLP weights: fp32 = 4 bytes per coarse+fine MLP parameter in the checkpoint; file = the int8 export's size.",
        "Train samples/s of runs trained side by side share one device: compare them with each other, not with a "
        "run alone.",
        "Eval rays/s: one ns-eval after another, each timed alone (one pass over 3 views), so any other load on the "
        "machine at that moment lowers it; for integer vs fp32 speed see the interleaved measurement of "
        "scripts/bench_int8.py.",
        "",
        f"![test views]({out.name}_view.png)",
        "",
        f"![size vs PSNR]({out.name}_size_psnr.png)",
    ]
    return "\n".join(lines) + "\n"


def _table1_answer(rows: Dict) -> List[str]:
    def gap(fused: str, unfused: str) -> Optional[float]:
        if fused in rows and unfused in rows and "int8" in rows[fused] and "int8" in rows[unfused]:
            return rows[fused]["int8"]["psnr"] - rows[unfused]["int8"]["psnr"]
        return None

    default, from0 = gap("qat-w8a8-fused", "qat-w8a8-unfused"), gap("qat-w8a8-fused-from0", "qat-w8a8-unfused-from0")
    if default is None and from0 is None:
        return []
    lines = ["", "Fused minus unfused (int8 exports): "]
    lines[-1] += f"QAT after the fp32 warm-up {_fmt(default, '+.3f')} dB; QAT from step 0 {_fmt(from0, '+.3f')} dB"
    lines[-1] += " (the paper: +6.20 dB)."
    if from0 is not None and "fp32" in rows:
        fp32 = rows["fp32"]["trained"]["psnr"]
        lines.append(
            f"From step 0, fused loses {fp32 - rows['qat-w8a8-fused-from0']['int8']['psnr']:.2f} dB and unfused "
            f"{fp32 - rows['qat-w8a8-unfused-from0']['int8']['psnr']:.2f} dB against fp32."
        )
    return lines


def _frontier(rows: Dict) -> List[str]:
    fused = [r for n, r in rows.items() if "int8" in r and n.endswith("-fused")]
    if not fused or "fp32" not in rows:
        return []
    fp32 = rows["fp32"]["trained"]["psnr"]
    lines = [
        "",
        "## Size-quality frontier (fused, int8 exports)",
        "",
        "| variant | file bytes | vs fp32 weights | PSNR | minus fp32 (dB) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| fp32 | {rows['fp32']['fp32_weight_bytes']:,} | 1.00x | {fp32:.3f} | |",
    ]
    for r in sorted(fused, key=lambda r: -r["export_file_bytes"]):
        ratio = rows["fp32"]["fp32_weight_bytes"] / r["export_file_bytes"]
        lines.append(
            f"| {r['variant']} | {r['export_file_bytes']:,} | {ratio:.2f}x smaller | {r['int8']['psnr']:.3f} | "
            f"{r['int8']['psnr'] - fp32:+.3f} |"
        )
    return lines


def _checks(rows: Dict) -> List[str]:
    if "fp32" not in rows or "qat-w8a8-fused" not in rows:
        return []
    fp32 = rows["fp32"]["trained"]["psnr"]
    loss = fp32 - rows["qat-w8a8-fused"]["trained"]["psnr"]
    gaps = [abs(r["int8_minus_trained_psnr_db"]) for r in rows.values() if "int8_minus_trained_psnr_db" in r]

    def verdict(ok: bool) -> str:
        return "ok" if ok else "NOT MET"

    checks = [
        f"QAT w8a8 fused loses {loss:.4f} dB against fp32 (limit 0.1: {verdict(loss <= 0.1)})",
        f"largest |int8 export - fake-quantized| {max(gaps):.5f} dB (limit 0.02: {verdict(max(gaps) <= 0.02)})",
    ]
    for name in ("qat-w3a8-fused", "qat-w2a8-fused"):
        if name in rows and "int8" in rows[name]:
            low = fp32 - rows[name]["int8"]["psnr"]
            checks.append(f"{name} loses {low:.3f} dB (limit {LOW_BIT_LIMIT_DB}: {verdict(low <= LOW_BIT_LIMIT_DB)})")
    return ["", "Checks: " + "; ".join(checks) + "."]


if __name__ == "__main__":
    tyro.cli(Benchmark).main()
