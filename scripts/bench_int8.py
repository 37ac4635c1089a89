"""Benchmark integer inference against fp32 on this machine, as ratios measured in one run.

1. MLP throughput: the default NeRF MLP (595,844 parameters) at one batch size, samples/s of fp32 (quantization
   off), fake-quantized fp32 (what a QAT run computes), and the integer model with each kernel setting ("auto",
   the default, and "int", "float", "onednn" asked for by name; epilogues compiled), plus "auto" eager.
   Timed repetitions are interleaved; the median is reported, with the kernels each setting ran.
2. Eval throughput (what ns-eval measures, rays/s over the held-out views): an fp32 run and a QAT run,
   both trained briefly with the default architecture on the demo scene, and the QAT run's int8 export, each with
   the MLPs over the whole batch and (CPU) in tiles of the default ``cpu_tile_samples``. Each pipeline renders one
   view first (warm-up, includes kernel timing and torch.compile); then every variant renders each view in turn.

    python scripts/bench_int8.py --output benchmarks/int8_cpu_avx2
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import tyro

from nerfqat_plugin.tools.runs import PRESETS, decision_lines, find_config, machine, machine_line, ns, sync, train_flags

REPO = Path(__file__).resolve().parents[1]


def interleaved(fns: Dict[str, Callable[[], object]], repeats: int, device: str = "cpu") -> Dict[str, float]:
    """Median seconds per call of each function, timing them in turn ``repeats`` times after one warm-up."""
    for fn in fns.values():
        fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def mlp_benchmark(batch: int, repeats: int, device: str) -> Dict[str, object]:
    from nerfqat_plugin.nerf.mlp import NeRFMLP
    from nerfqat_plugin.quant import QuantConfig, set_quant_state
    from nerfqat_plugin.quant.int8 import IntLinear, convert_to_int, set_kernel

    torch.manual_seed(0)
    mlp = NeRFMLP(63, 27, QuantConfig()).to(device).train()
    set_quant_state(mlp, active=True, observe=True)
    pos, dirs = torch.rand(batch, 63, device=device) * 2 - 1, torch.rand(batch, 27, device=device) * 2 - 1
    with torch.no_grad():
        raw, h = mlp.density(pos[:8192])  # calibrate the observers
        mlp.color(h, dirs[:8192])
    mlp.eval()
    fp32 = copy.deepcopy(mlp)
    set_quant_state(fp32, active=False, observe=False)
    variants = {"fp32": fp32, "fake_quant": mlp}
    for kernel, compile in (("auto", True), ("int", True), ("float", True), ("onednn", True), ("auto", False)):
        model = convert_to_int(copy.deepcopy(mlp))
        set_kernel(model, kernel, compile=compile)  # type: ignore[arg-type]
        variants[f"int8_{kernel}" + ("" if compile else "_eager")] = model

    def run(m) -> Callable[[], torch.Tensor]:
        def f() -> torch.Tensor:
            with torch.no_grad():
                raw, h = m.density(pos)
                return m.color(h, dirs)

        return f

    start = time.perf_counter()
    run(variants["int8_auto"])()
    compile_s = time.perf_counter() - start
    reference = run(mlp)()
    fidelity, kernels = {}, {}
    for name, model in variants.items():
        if name.startswith("int8"):
            diff = (run(model)() - reference).abs()
            fidelity[name] = {"bit_exact": bool(diff.max() == 0), "rgb_max_abs_diff": float(diff.max())}
            layers = [m for m in model.modules() if isinstance(m, IntLinear)]
            kernels[name] = sorted({m.resolved_kernel(torch.device(device)) for m in layers})
    secs = interleaved({k: run(m) for k, m in variants.items()}, repeats, device)
    rates = {k: batch / v for k, v in secs.items()}
    return {
        "batch": batch,
        "repeats": repeats,
        "samples_per_s": rates,
        "speedup_vs_fp32": {k: v / rates["fp32"] for k, v in rates.items()},
        "first_call_with_compile_s": compile_s,
        "fidelity_vs_fake_quant": fidelity,
        "kernels_run": kernels,
    }


def load_pipeline(config: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    return pipeline


def set_tile(pipeline, samples: int) -> None:
    for f in pipeline.model.fields.values():
        f.cpu_tile_samples = samples


def eval_rates(pipelines: Dict[str, object], tiles: List[int], rounds: int) -> Dict[str, Dict[str, float]]:
    """rays/s of each variant (a pipeline at a CPU tile size) over the held-out views, rendered as ns-eval does
    (``get_outputs_for_camera``), each view by every variant in turn (after one warm-up view each), ``rounds`` times;
    PSNR of the last round."""
    variants = {f"{name}/tile {tile}": (name, tile) for name in pipelines for tile in tiles}
    seconds = {v: 0.0 for v in variants}
    rays = {v: 0 for v in variants}
    psnr: Dict[str, List[float]] = {v: [] for v in variants}
    first = {name: True for name in pipelines}
    views = list(next(iter(pipelines.values())).datamanager.fixed_indices_eval_dataloader)
    for r in range(rounds):
        for camera, batch in views:
            for variant, (name, tile) in variants.items():
                pipeline = pipelines[name]
                set_tile(pipeline, tile)
                if first[name]:  # warm-up (kernel timing, torch.compile)
                    pipeline.model.get_outputs_for_camera(camera)
                    first[name] = False
                start = time.perf_counter()
                outputs = pipeline.model.get_outputs_for_camera(camera)
                seconds[variant] += time.perf_counter() - start
                rays[variant] += camera.height.item() * camera.width.item()
                if r == rounds - 1:
                    metrics, _ = pipeline.model.get_image_metrics_and_images(outputs, batch)
                    psnr[variant].append(float(metrics["psnr"]))
    return {v: {"rays_per_s": rays[v] / seconds[v], "psnr": statistics.mean(psnr[v])} for v in variants}


def eval_benchmark(
    work: Path, steps: int, rays: int, size: int, rounds: int, device: str, extra_tiles: Sequence[int] = ()
) -> Dict[str, object]:
    scene = work / "scene"
    subprocess.run(
        [sys.executable, str(REPO / "scripts/make_demo_scene.py"), "--output", str(scene), "--width", str(size),
         "--height", str(size * 3 // 4)],
        check=True, capture_output=True,
    )  # fmt: skip
    # the default architecture and the paper's sampler (scripts/bench_occupancy.py compares the samplers)
    preset = dataclasses.replace(PRESETS["gpu"], rays=rays, quant_start_step=0, sampler="hierarchical")
    data = ["llff-data", "--data", str(scene), "--downscale-factor", "1"]
    configs = {}
    for name, extra in (("fp32", ["--pipeline.model.quant.enabled", "False"]), ("qat", [])):
        ns("ns-train", *train_flags(device, work / "outputs", name, steps, preset), *extra, *data, cwd=work)
        configs[name] = find_config(work / "outputs", name, "nerf-qat")
    ns("ns-export-int8", "--load-config", configs["qat"], "--output-dir", work / "int8", cwd=work)
    configs["int8_export"] = work / "int8" / "config.yml"
    pipelines = {name: load_pipeline(cfg) for name, cfg in configs.items()}
    # the whole batch, then (CPU) the default tile size: the baseline is the fp32 run as it renders by default
    tiles = [0] + ([*extra_tiles, pipelines["fp32"].model.config.cpu_tile_samples] if device == "cpu" else [])
    results = eval_rates(pipelines, tiles, rounds)
    base = results[f"fp32/tile {tiles[-1]}"]["rays_per_s"]
    return {
        "scene": f"demo scene {size}x{size * 3 // 4}, 3 held-out views",
        "train_steps": steps,
        "train_rays_per_batch": rays,
        "rounds": rounds,
        "architecture": "default (8x256, 64 coarse + 128 fine samples)",
        "results": results,
        "speedup_vs_fp32": {k: v["rays_per_s"] / base for k, v in results.items()},
    }


@dataclass
class BenchInt8:
    """Measure fp32 vs integer inference throughput (MLP and ns-eval) on this machine."""

    output: Path = Path("benchmarks/int8_cpu")
    """Write <output>.json and <output>.md."""
    batch: int = 65536
    """MLP samples per forward call."""
    repeats: int = 5
    """Timed repetitions per variant (median reported)."""
    eval_steps: int = 20
    """Training steps of the runs used for the eval benchmark (speed does not depend on quality)."""
    eval_rays: int = 256
    """Rays per training batch for those runs."""
    eval_size: int = 64
    """Width of the demo scene's images for the eval benchmark."""
    eval_rounds: int = 2
    """Times every variant renders each held-out view (views interleaved across variants)."""
    skip_eval: bool = False
    """Only run the MLP benchmark."""
    tiles: Tuple[int, ...] = ()
    """CPU tile sizes (samples) to render at too, besides the whole batch and the default ``cpu_tile_samples``."""
    device: Optional[str] = None
    """cpu or cuda; default: cuda when available."""

    def main(self) -> None:
        command = "python scripts/bench_int8.py " + " ".join(sys.argv[1:])
        result: Dict[str, object] = {"command": command.strip()}
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        print("MLP benchmark ...", flush=True)
        result["mlp"] = mlp_benchmark(self.batch, self.repeats, device)
        print(json.dumps(result["mlp"], indent=1), flush=True)
        if not self.skip_eval:
            print("eval benchmark (trains two tiny runs, exports, evaluates) ...", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                result["eval"] = eval_benchmark(
                    Path(tmp), self.eval_steps, self.eval_rays, self.eval_size, self.eval_rounds, device, self.tiles
                )
            print(json.dumps(result["eval"], indent=1), flush=True)
        result["machine"] = machine(device)  # after the runs: it lists the kernel decisions made
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
        self.output.with_suffix(".md").write_text(report(result))
        print(f"wrote {self.output.with_suffix('.json')} and {self.output.with_suffix('.md')}")


def report(result: Dict) -> str:
    mlp = result["mlp"]
    lines = [
        "# Integer inference vs fp32",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine_line(result['machine'])}",
        "",
        f"## MLP throughput (default NeRF MLP, batch {mlp['batch']}, median of {mlp['repeats']})",
        "",
        "| variant | samples/s | vs fp32 | kernels run | vs fake-quantized |",
        "|---|---:|---:|---|---|",
    ]
    for k, v in mlp["samples_per_s"].items():
        fid = mlp["fidelity_vs_fake_quant"].get(k)
        same = (
            "" if fid is None else ("bit-exact" if fid["bit_exact"] else f"RGB max diff {fid['rgb_max_abs_diff']:.1e}")
        )
        kernels = ", ".join(mlp["kernels_run"].get(k, []))
        lines.append(f"| {k} | {v:,.0f} | {mlp['speedup_vs_fp32'][k]:.2f}x | {kernels} | {same} |")
    lines += [
        "",
        f"First call of int8_auto (includes its kernel timing and torch.compile): "
        f"{mlp['first_call_with_compile_s']:.1f} s.",
    ]
    if "eval" in result:
        ev = result["eval"]
        lines += [
            "",
            f"## Eval throughput ({ev['scene']}; {ev['architecture']})",
            "",
            f"Runs trained {ev['train_steps']} steps at {ev['train_rays_per_batch']} rays/batch (speed only; "
            "quality is not the point here). Each variant rendered every view "
            f"{ev.get('rounds', 1)} time(s), views interleaved across variants, after one warm-up view.",
            "",
            "| run | rays/s | vs fp32 | PSNR |",
            "|---|---:|---:|---:|",
        ]
        for k, v in ev["results"].items():
            lines.append(f"| {k} | {v['rays_per_s']:,.0f} | {ev['speedup_vs_fp32'][k]:.2f}x | {v['psnr']:.2f} |")
    lines += decision_lines(result["machine"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    tyro.cli(BenchInt8).main()
