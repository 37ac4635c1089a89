"""The occupancy sampler against the paper's hierarchical one, measured in one run on this machine.

For each scene (an object in a box, the forward-facing demo scene, fern) four runs of the same network are trained
in this process by nerfstudio's Trainer, with the same rays per batch and schedule: hierarchical and occupancy
sampling, each fp32 (quantization off) and QAT (w8a8 from step 0). Every ``eval_every`` steps the training clock
stops and held-out PSNR is measured on a fixed set of held-out pixels. Reported:

1. training: wall time (training steps only) and held-out PSNR along the way; the time each run needs to reach the
   final PSNR of the hierarchical fp32 run, and that time as a fraction of the hierarchical run's;
2. rendering (what ns-eval measures: rays/s over the held-out views, after one warm-up view per pipeline, views
   interleaved across variants): fp32 / fake-quantized / int8 export x hierarchical / occupancy, and the occupancy
   int8 export with its grid filled and early stop off (the same model without skipping); MLP evaluations per ray
   and the fraction of the occupancy sampler's bins skipped.

    python scripts/bench_occupancy.py --output benchmarks/occupancy_cpu_avx2
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8 import load_pipeline  # noqa: E402
from benchlib.report import commit, provenance  # noqa: E402

from nerfqat_plugin.tools.runs import (  # noqa: E402
    PRESETS,
    decision_lines,
    machine,
    ns,
    seed_everything,
    train_step,
    trainer_config,
)

REPO = Path(__file__).resolve().parents[1]
FERN = REPO.parent / "shared/data/nerf_llff_data/fern"
VARIANTS = ("hierarchical fp32", "hierarchical qat", "occupancy fp32", "occupancy qat")


@dataclass
class BenchOccupancy:
    """Train hierarchical and occupancy runs (fp32, QAT) per scene; time them to a PSNR; time their renders."""

    output: Path = Path("benchmarks/occupancy_cpu")
    """Write <output>.json and <output>.md."""
    scenes: Tuple[str, ...] = ("object", "demo", "fern")
    """Scenes to run: object (Blender format, made here), demo (forward-facing, made here), fern (../shared)."""
    steps: int = 600
    """Training steps of every run."""
    eval_every: int = 100
    """Steps between held-out PSNR measurements."""
    eval_pixels: int = 4096
    """Held-out pixels (fixed, drawn once per scene) of each PSNR measurement during training."""
    rays: int = 512
    """Rays per training batch."""
    preset: str = "cpu"
    """Network and hierarchical samples (tools/runs.py PRESETS); the occupancy sampler gets coarse + fine bins."""
    render_views: int = 3
    """Held-out views rendered per variant for the render rates (fewer: faster)."""
    render_rounds: int = 1
    """Times every variant renders those views (the rates are over all of them: more rounds, less noise)."""
    device: str = "cpu"
    """cpu or cuda (the same PyTorch marcher runs on both)."""
    fern: Path = FERN
    """The fern scene folder (poses_bounds.npy, images_16/)."""
    workdir: Optional[Path] = None
    """Keep the runs and exports here (default: a temporary folder, deleted at the end)."""
    rerender: Optional[Path] = None
    """The JSON of an earlier run whose --workdir (pass it again) still holds its trained runs: keep that run's
    training figures, export the QAT runs again and measure the rendering with this commit's code."""

    def main(self) -> None:
        command = "python scripts/bench_occupancy.py " + " ".join(sys.argv[1:])
        result: Dict[str, object] = {"command": command.strip(), "commit": commit()}
        result.update(steps=self.steps, rays=self.rays)
        preset = dataclasses.replace(PRESETS[self.preset], rays=self.rays, quant_start_step=0)
        result["preset"] = dataclasses.asdict(preset)
        result["scenes"] = {}
        if self.rerender is not None:
            self._rerender(result)
            return
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(self.workdir or tmp)
            for scene in self.scenes:
                print(f"=== {scene}", flush=True)
                result["scenes"][scene] = self._scene(scene, root / scene, preset)  # type: ignore[index]
                self._write(result)
        result["machine"] = machine(self.device)
        self._write(result)
        print(report(result))

    def _rerender(self, result: Dict[str, object]) -> None:
        """The rendering of the runs an earlier benchmark kept, measured again (see ``rerender``)."""
        assert self.rerender is not None
        if self.workdir is None:
            raise SystemExit("--rerender needs the --workdir that run kept its runs in")
        earlier = json.loads(self.rerender.read_text())
        result.update({k: earlier[k] for k in ("steps", "rays", "preset")})
        result["training_command"], result["training_commit"] = earlier["command"], earlier["commit"]
        for scene in self.scenes:
            if scene not in earlier["scenes"]:
                raise SystemExit(f"{self.rerender}: has no scene {scene!r} (it has {sorted(earlier['scenes'])})")
            work = self.workdir.resolve() / scene
            configs = {v: work / v.replace(" ", "-") / "run/nerf-qat/run/config.yml" for v in VARIANTS}
            missing = [str(c) for c in configs.values() if not c.is_file()]
            if missing:
                raise SystemExit(f"{self.workdir}: the runs of {self.rerender} are not all there: no {missing[0]}")
            print(f"=== {scene}: rendering again", flush=True)
            entry = {k: v for k, v in earlier["scenes"][scene].items() if k != "rendering"}
            entry["rendering"] = self._render(configs, work, overwrite=True)
            result["scenes"][scene] = entry  # type: ignore[index]
            self._write(result)
        result["machine"] = machine(self.device)
        self._write(result)
        print(report(result))

    def _write(self, result: Dict[str, object]) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
        if "machine" in result:
            self.output.with_suffix(".md").write_text(report(result))

    # --- one scene ----------------------------------------------------------------------------------------------

    def _dataparser(self, scene: str, work: Path):
        from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

        from nerfqat_plugin.llff import LLFFDataParserConfig

        if scene == "object":
            data = work / "data"
            script = REPO / "scripts/make_object_scene.py"
            subprocess.run([sys.executable, str(script), "--output", str(data)], check=True, capture_output=True)
            return BlenderDataParserConfig(data=data), "object in a box, Blender format, 64x64, 24+6+6 views"
        if scene == "demo":
            data = work / "data"
            script = REPO / "scripts/make_demo_scene.py"
            args = ["--output", str(data), "--width", "64", "--height", "48"]
            subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True)
            return LLFFDataParserConfig(data=data, downscale_factor=1, ndc=True), "demo scene 64x48, forward-facing"
        if scene == "fern":
            if not (self.fern / "poses_bounds.npy").is_file():
                raise FileNotFoundError(f"{self.fern}: no fern scene there (pass --fern FOLDER)")
            data = self.fern.resolve()  # absolute: the runs are exported from their own folder
            return LLFFDataParserConfig(data=data, downscale_factor=16, ndc=True), "fern images_16 (252x189), NDC"
        raise ValueError(f"unknown scene {scene!r} (object, demo or fern)")

    def _config(self, dataparser, preset, work: Path, sampler: str, qat: bool):
        from nerfqat_plugin.registration import nerf_qat

        config = trainer_config(nerf_qat.config, self.device, work, self.steps, preset)
        config.pipeline.datamanager.dataparser = dataparser
        model = config.pipeline.model
        model.sampler = sampler
        model.occupancy.samples = preset.coarse_samples + preset.fine_samples
        model.quant.enabled = qat
        if not hasattr(dataparser, "ndc"):  # Blender: nerfstudio's near/far for its synthetic scenes
            model.collider_params = {"near_plane": 2.0, "far_plane": 6.0}
        config.optimizers["fields"]["scheduler"].max_steps = self.steps
        config.steps_per_save = self.steps
        config.save_only_latest_checkpoint = True
        return config

    def _scene(self, scene: str, work: Path, preset) -> Dict[str, object]:
        work.mkdir(parents=True)
        dataparser, description = self._dataparser(scene, work)
        out: Dict[str, object] = {"description": description, "training": {}}
        configs: Dict[str, Path] = {}
        pixels = None
        for variant in VARIANTS:
            sampler, precision = variant.split()
            print(f"[{scene}] training {variant}", flush=True)
            config = self._config(dataparser, preset, work / variant.replace(" ", "-"), sampler, precision == "qat")
            seed_everything(0)
            config.save_config()  # config.yml, as ns-train writes it (ns-export-int8 reads it)
            trainer = config.setup(local_rank=0, world_size=1)
            trainer.setup()
            if pixels is None:
                pixels = held_out_pixels(trainer.pipeline, self.eval_pixels)
            curve, seconds = [], 0.0
            for step in range(self.steps):
                start = time.perf_counter()
                train_step(trainer, step)
                seconds += time.perf_counter() - start
                if (step + 1) % self.eval_every == 0 or step + 1 == self.steps:
                    curve.append({"step": step + 1, "train_s": seconds, "psnr": pixel_psnr(trainer.pipeline, pixels)})
                    print(f"  step {step + 1}: {seconds:.0f} s, PSNR {curve[-1]['psnr']:.2f}", flush=True)
            trainer.save_checkpoint(self.steps - 1)
            entry: Dict[str, object] = {"curve": curve, "train_s": seconds, "final_psnr": curve[-1]["psnr"]}
            grid = getattr(trainer.pipeline.model, "grid", None)
            if grid is not None:
                entry["grid_occupied"] = grid.occupied_fraction()
            out["training"][variant] = entry  # type: ignore[index]
            configs[variant] = Path(config.get_base_dir()) / "config.yml"
            del trainer
            gc.collect()
        out["time_to_target"] = time_to_target(out["training"])  # type: ignore[arg-type]
        out["rendering"] = self._render(configs, work)
        return out

    def _render(self, configs: Dict[str, Path], work: Path, overwrite: bool = False) -> Dict[str, object]:
        for sampler in ("hierarchical", "occupancy"):
            export = work / f"{sampler}-int8"
            args = ["--load-config", configs[f"{sampler} qat"], "--output-dir", export]
            ns("ns-export-int8", *args, *(["--overwrite"] if overwrite else []), cwd=work)
            configs[f"{sampler} int8"] = export / "config.yml"
        names = {
            "hierarchical fp32": "hierarchical fp32",
            "hierarchical fake-quantized": "hierarchical qat",
            "hierarchical int8 export": "hierarchical int8",
            "occupancy fp32": "occupancy fp32",
            "occupancy fake-quantized": "occupancy qat",
            "occupancy int8 export": "occupancy int8",
        }
        pipelines = {label: load_pipeline(configs[key]) for label, key in names.items()}
        unskipped = load_pipeline(configs["occupancy int8"])
        unskipped.model.grid.bits.fill_(True)
        unskipped.model.config.occupancy.early_stop = 0.0
        pipelines["occupancy int8 export, no skipping"] = unskipped
        return render_rates(pipelines, self.render_views, self.render_rounds)


# --- measurements ------------------------------------------------------------------------------------------------


def held_out_pixels(pipeline, count: int):
    """(ray bundle [count, 1], target RGB [count, 3]) of pixels drawn once from the held-out views."""
    views = list(pipeline.datamanager.fixed_indices_eval_dataloader)
    generator = torch.Generator().manual_seed(0)
    bundles = []
    targets = []
    per_view = math.ceil(count / len(views))
    for camera, batch in views:
        rays = camera.generate_rays(camera_indices=0, keep_shape=True)
        h, w = rays.shape[:2]
        index = torch.randperm(h * w, generator=generator)[:per_view]
        bundles.append(rays.flatten()[index])
        image = pipeline.model.renderer_rgb.blend_background(batch["image"].to(torch.float32))
        targets.append(image.reshape(-1, image.shape[-1])[index][:, :3])
    bundle = _cat_bundles(bundles)
    return bundle[:count].reshape((-1, 1)), torch.cat(targets)[:count]


def _cat_bundles(bundles):
    from nerfstudio.cameras.rays import RayBundle

    first = bundles[0]
    fields = {}
    for f in dataclasses.fields(RayBundle):
        value = getattr(first, f.name)
        if isinstance(value, torch.Tensor):
            fields[f.name] = torch.cat([getattr(b, f.name) for b in bundles])
        elif isinstance(value, dict):
            fields[f.name] = {k: torch.cat([getattr(b, f.name)[k] for b in bundles]) for k in value}
        else:
            fields[f.name] = value
    return RayBundle(**fields)


@torch.no_grad()
def pixel_psnr(pipeline, pixels) -> float:
    """Held-out PSNR of the model on the fixed pixels (eval mode, as ns-eval renders)."""
    bundle, target = pixels
    model = pipeline.model
    model.eval()
    try:
        rgb = model.get_outputs_for_camera_ray_bundle(bundle.to(model.device))["rgb"].reshape(-1, 3).cpu()
    finally:
        model.train()
    mse = float(torch.mean((rgb.clamp(0, 1) - target) ** 2))
    return -10.0 * math.log10(max(mse, 1e-12))


def time_to_target(training: Dict[str, Dict[str, object]]) -> Dict[str, object]:
    """Training seconds each run needs to reach the hierarchical fp32 run's final PSNR (first measurement at or
    above it), and that as a fraction of the hierarchical fp32 run's time."""
    target = float(training["hierarchical fp32"]["final_psnr"])  # type: ignore[arg-type]
    base = float(training["hierarchical fp32"]["train_s"])  # type: ignore[arg-type]
    out: Dict[str, object] = {"target_psnr": target}
    for variant, entry in training.items():
        reached = next((p for p in entry["curve"] if p["psnr"] >= target), None)  # type: ignore[union-attr]
        out[variant] = (
            None if reached is None else {"step": reached["step"], "train_s": reached["train_s"],
                                          "fraction_of_hierarchical_fp32": reached["train_s"] / base}
        )  # fmt: skip
    return out


def render_rates(pipelines: Dict[str, object], views: int, rounds: int = 1) -> Dict[str, object]:
    """rays/s, PSNR and MLP evaluations per ray of each pipeline over the first ``views`` held-out views, rendered
    by ``get_outputs_for_camera`` (as ns-eval), each view by every pipeline in turn, after one warm-up view each;
    ``rounds`` times over (PSNR and evaluations of the first round: the renders are deterministic)."""
    first = next(iter(pipelines.values()))
    cameras = list(first.datamanager.fixed_indices_eval_dataloader)[:views]  # type: ignore[attr-defined]
    seconds = {name: 0.0 for name in pipelines}
    rays = {name: 0 for name in pipelines}
    psnr: Dict[str, List[float]] = {name: [] for name in pipelines}
    evaluations: Dict[str, List[float]] = {name: [] for name in pipelines}
    for pipeline in pipelines.values():
        pipeline.model.get_outputs_for_camera(cameras[0][0])  # type: ignore[attr-defined]  # warm-up
    for round_ in range(max(rounds, 1)):
        for camera, batch in cameras:
            for name, pipeline in pipelines.items():
                model = pipeline.model  # type: ignore[attr-defined]
                start = time.perf_counter()
                outputs = model.get_outputs_for_camera(camera)
                seconds[name] += time.perf_counter() - start
                rays[name] += int(camera.height.item() * camera.width.item())
                if round_ == 0:
                    metrics, _ = model.get_image_metrics_and_images(outputs, batch)
                    psnr[name].append(float(metrics["psnr"]))
                    evaluations[name].append(mlp_evaluations_per_ray(model, outputs))
    result: Dict[str, object] = {}
    for name in pipelines:
        model = pipelines[name].model  # type: ignore[attr-defined]
        entry = {
            "rays_per_s": rays[name] / seconds[name],
            "psnr": statistics.mean(psnr[name]),
            "mlp_evaluations_per_ray": statistics.mean(evaluations[name]),
        }
        if model.grid is not None:
            entry["bins_skipped"] = 1.0 - entry["mlp_evaluations_per_ray"] / model.config.occupancy.samples
        result[name] = entry
    base = result["hierarchical fp32"]["rays_per_s"]  # type: ignore[index]
    for entry in result.values():
        entry["vs_hierarchical_fp32"] = entry["rays_per_s"] / base  # type: ignore[index]
    return {"views": len(cameras), "rounds": max(rounds, 1), "results": result}


def mlp_evaluations_per_ray(model, outputs) -> float:
    """MLP evaluations per ray: the occupancy sampler counts its own; the hierarchical one evaluates the coarse
    samples, then coarse + importance + 1 fine samples (the merged edges)."""
    if "mlp_samples" in outputs:
        return float(outputs["mlp_samples"].mean())
    cfg = model.config
    return float(cfg.num_coarse_samples + cfg.num_coarse_samples + cfg.num_importance_samples + 1)


# --- report ------------------------------------------------------------------------------------------------------


def report(result: Dict) -> str:
    p = result["preset"]
    lines = [
        "# Occupancy sampler vs hierarchical sampler",
        "",
        f"Commit: {result.get('commit', 'unknown')}  ",
        *provenance(result),
    ]
    if "training_command" in result:
        lines += [
            f"Training (figures kept from that run): commit {result['training_commit']}, "
            f"`{result['training_command']}`  ",
        ]
    lines += [
        f"Network {p['num_layers']}x{p['layer_width']} (view {p['view_width']}), {result['rays']} rays per batch, "
        f"{result['steps']} steps per run. Hierarchical: {p['coarse_samples']} coarse + {p['fine_samples']} "
        f"importance samples, two networks; occupancy: {p['coarse_samples'] + p['fine_samples']} bins, one network.",
    ]
    for scene, s in result["scenes"].items():
        t = s["time_to_target"]
        lines += [
            "",
            f"## {scene}: {s['description']}",
            "",
            f"### Training (target: the hierarchical fp32 run's final held-out PSNR, {t['target_psnr']:.2f} dB)",
            "",
            "| run | train s | final PSNR | grid occupied | reaches target at | time vs hierarchical fp32 |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for variant, e in s["training"].items():
            reach = t.get(variant)
            occupied = f"{e['grid_occupied']:.1%}" if "grid_occupied" in e else ""
            at = "not reached" if reach is None else f"step {reach['step']}, {reach['train_s']:.0f} s"
            frac = "" if reach is None else f"{reach['fraction_of_hierarchical_fp32']:.2f}"
            lines.append(f"| {variant} | {e['train_s']:.0f} | {e['final_psnr']:.2f} | {occupied} | {at} | {frac} |")
        curve_steps = [c["step"] for c in next(iter(s["training"].values()))["curve"]]
        lines += ["", "Held-out PSNR by step (training seconds):", ""]
        lines.append("| run | " + " | ".join(str(x) for x in curve_steps) + " |")
        lines.append("|---|" + "---:|" * len(curve_steps))
        for variant, e in s["training"].items():
            cells = [f"{c['psnr']:.2f} ({c['train_s']:.0f})" for c in e["curve"]]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        r = s["rendering"]
        rounds = f", each {r['rounds']} times" if r.get("rounds", 1) > 1 else ""
        lines += [
            "",
            f"### Rendering ({r['views']} held-out views{rounds}, as ns-eval)",
            "",
            "| variant | rays/s | vs hierarchical fp32 | PSNR | MLP evaluations / ray | bins skipped |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, e in r["results"].items():
            skipped = f"{e['bins_skipped']:.1%}" if "bins_skipped" in e else ""
            lines.append(
                f"| {name} | {e['rays_per_s']:,.0f} | {e['vs_hierarchical_fp32']:.2f}x | {e['psnr']:.2f} | "
                f"{e['mlp_evaluations_per_ray']:.1f} | {skipped} |"
            )
        res = r["results"]
        skip = res["occupancy int8 export"]["rays_per_s"] / res["occupancy int8 export, no skipping"]["rays_per_s"]
        dpsnr = res["occupancy int8 export"]["psnr"] - res["occupancy int8 export, no skipping"]["psnr"]
        lines += ["", f"Skipping: the int8 export {skip:.2f}x its own rays/s without skipping, PSNR {dpsnr:+.3f} dB."]
    lines += decision_lines(result["machine"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    tyro.cli(BenchOccupancy).main()
