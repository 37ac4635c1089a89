"""Benchmark integer inference against fp32 on this machine, as ratios measured in one run.

1. MLP throughput: the default NeRF MLP (595,844 parameters) at one batch size, samples/s of
   fp32 (quantization off), fake-quantized fp32 (what a QAT run computes), and the integer model
   (oneDNN int8 Linear, the default on CPU, with its few elementwise steps compiled or eager; and
   torch._int_mm with a compiled epilogue, bit-exact).
   Timed repetitions are interleaved; the median is reported.
2. Eval throughput (what ns-eval measures, rays/s over the held-out views): an fp32 run and a QAT run,
   both trained briefly with the default architecture on the demo scene, and the QAT run's int8 export.
   Each pipeline renders one image first (warm-up, includes torch.compile), then the timed pass.

    python scripts/bench_int8.py --output benchmarks/int8_cpu
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

import torch
import tyro

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def machine() -> Dict[str, str]:
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def interleaved(fns: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    """Median seconds per call of each function, timing them in turn ``repeats`` times after one warm-up."""
    for fn in fns.values():
        fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def mlp_benchmark(batch: int, repeats: int) -> Dict[str, object]:
    from nerfqat_plugin.mlp import NeRFMLP
    from nerfqat_plugin.quant import QuantConfig, set_quant_state
    from nerfqat_plugin.quant.int8 import convert_to_int, set_kernel

    torch.manual_seed(0)
    mlp = NeRFMLP(63, 27, QuantConfig()).train()
    set_quant_state(mlp, active=True, observe=True)
    pos, dirs = torch.rand(batch, 63) * 2 - 1, torch.rand(batch, 27) * 2 - 1
    with torch.no_grad():
        raw, h = mlp.density(pos[:8192])  # calibrate the observers
        mlp.color(h, dirs[:8192])
    mlp.eval()
    fp32 = copy.deepcopy(mlp)
    set_quant_state(fp32, active=False, observe=False)
    int_onednn = convert_to_int(copy.deepcopy(mlp))
    set_kernel(int_onednn, "onednn", compile=True)
    int_onednn_eager = convert_to_int(copy.deepcopy(mlp))
    set_kernel(int_onednn_eager, "onednn", compile=False)
    int_compiled = convert_to_int(copy.deepcopy(mlp))
    set_kernel(int_compiled, "int", compile=True)

    def run(m) -> Callable[[], None]:
        def f() -> None:
            with torch.no_grad():
                raw, h = m.density(pos)
                m.color(h, dirs)

        return f

    start = time.perf_counter()
    run(int_compiled)()
    compile_s = time.perf_counter() - start
    with torch.no_grad():
        ref = mlp.color(mlp.density(pos)[1], dirs)
        exact = torch.equal(ref, int_compiled.color(int_compiled.density(pos)[1], dirs))
        onednn_rgb_diff = (ref - int_onednn.color(int_onednn.density(pos)[1], dirs)).abs()
    secs = interleaved(
        {
            "fp32": run(fp32),
            "fake_quant": run(mlp),
            "int8_onednn": run(int_onednn),
            "int8_onednn_eager_epilogue": run(int_onednn_eager),
            "int8_int_mm_compiled": run(int_compiled),
        },
        repeats,
    )
    rates = {k: batch / v for k, v in secs.items()}
    return {
        "batch": batch,
        "repeats": repeats,
        "samples_per_s": rates,
        "speedup_vs_fp32": {k: v / rates["fp32"] for k, v in rates.items()},
        "first_call_with_compile_s": compile_s,
        "int8_int_mm_bit_exact_with_fake_quant": exact,
        "int8_onednn_rgb_abs_diff": {"mean": float(onednn_rgb_diff.mean()), "max": float(onednn_rgb_diff.max())},
    }


def ns(*args: str, cwd: Path) -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def eval_rays_per_s(config: Path) -> Dict[str, float]:
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    camera, _ = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))
    pipeline.model.get_outputs_for_camera(camera)  # warm-up (torch.compile for the int8 export)
    metrics = pipeline.get_average_eval_image_metrics()
    return {"rays_per_s": metrics["num_rays_per_sec"], "psnr": metrics["psnr"]}


def eval_benchmark(work: Path, steps: int, rays: int, size: int) -> Dict[str, object]:
    scene = work / "scene"
    subprocess.run(
        [sys.executable, str(REPO / "scripts/make_demo_scene.py"), "--output", str(scene), "--width", str(size),
         "--height", str(size * 3 // 4)],
        check=True, capture_output=True,
    )  # fmt: skip
    common = [
        "--machine.device-type", "cpu", "--vis", "tensorboard", "--output-dir", str(work / "outputs"),
        "--max-num-iterations", str(steps), "--steps-per-save", str(steps), "--steps-per-eval-batch", "100000",
        "--steps-per-eval-image", "100000", "--steps-per-eval-all-images", "100000",
        "--pipeline.datamanager.train-num-rays-per-batch", str(rays),
    ]  # fmt: skip
    data = ["llff-data", "--data", str(scene), "--downscale-factor", "1"]
    configs = {}
    for name, extra in (("fp32", ["--pipeline.model.quant.enabled", "False"]), ("qat", [])):
        ns("ns-train", "nerf-qat", "--experiment-name", name, *common, *extra, *data, cwd=work)
        configs[name] = sorted((work / "outputs" / name / "nerf-qat").glob("*/config.yml"))[-1]
    ns("ns-export-int8", "--load-config", str(configs["qat"]), "--output-dir", str(work / "int8"), cwd=work)
    configs["int8_export"] = work / "int8" / "config.yml"
    results = {name: eval_rays_per_s(cfg) for name, cfg in configs.items()}
    base = results["fp32"]["rays_per_s"]
    return {
        "scene": f"demo scene {size}x{size * 3 // 4}, 3 held-out views",
        "train_steps": steps,
        "train_rays_per_batch": rays,
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
    skip_eval: bool = False
    """Only run the MLP benchmark."""

    def main(self) -> None:
        command = "python scripts/bench_int8.py " + " ".join(sys.argv[1:])
        result: Dict[str, object] = {"command": command.strip(), "machine": machine()}
        print("MLP benchmark ...", flush=True)
        result["mlp"] = mlp_benchmark(self.batch, self.repeats)
        print(json.dumps(result["mlp"], indent=1), flush=True)
        if not self.skip_eval:
            print("eval benchmark (trains two tiny runs, exports, evaluates) ...", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                result["eval"] = eval_benchmark(Path(tmp), self.eval_steps, self.eval_rays, self.eval_size)
            print(json.dumps(result["eval"], indent=1), flush=True)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
        self.output.with_suffix(".md").write_text(report(result))
        print(f"wrote {self.output.with_suffix('.json')} and {self.output.with_suffix('.md')}")


def report(result: Dict) -> str:
    m = result["machine"]
    mlp = result["mlp"]
    lines = [
        "# Integer inference vs fp32",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), torch {m['torch']}, "
        f"GPU: {m['gpu']}",
        "",
        f"## MLP throughput (default NeRF MLP, batch {mlp['batch']}, median of {mlp['repeats']})",
        "",
        "| variant | samples/s | vs fp32 |",
        "|---|---:|---:|",
    ]
    for k, v in mlp["samples_per_s"].items():
        lines.append(f"| {k} | {v:,.0f} | {mlp['speedup_vs_fp32'][k]:.2f}x |")
    lines += [
        "",
        f"First call of the compiled `_int_mm` variant (includes torch.compile): "
        f"{mlp['first_call_with_compile_s']:.1f} s. Its output is bit-exact with the fake-quantized model: "
        f"{mlp['int8_int_mm_bit_exact_with_fake_quant']}. oneDNN variant (rounds its requantization its own way), "
        f"RGB vs fake-quantized: mean |diff| {mlp['int8_onednn_rgb_abs_diff']['mean']:.2e}, "
        f"max {mlp['int8_onednn_rgb_abs_diff']['max']:.2e}.",
    ]
    if "eval" in result:
        ev = result["eval"]
        lines += [
            "",
            f"## Eval throughput ({ev['scene']}; {ev['architecture']})",
            "",
            f"Runs trained {ev['train_steps']} steps at {ev['train_rays_per_batch']} rays/batch (speed only; "
            "quality is not the point here). Timed pass after one warm-up image.",
            "",
            "| run | rays/s | vs fp32 | PSNR |",
            "|---|---:|---:|---:|",
        ]
        for k, v in ev["results"].items():
            lines.append(f"| {k} | {v['rays_per_s']:,.0f} | {ev['speedup_vs_fp32'][k]:.2f}x | {v['psnr']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    tyro.cli(BenchInt8).main()
