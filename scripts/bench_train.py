"""Training throughput of nerf-qat against nerfstudio's vanilla-nerf and the bare MLP, measured in one run.

    python scripts/bench_train.py                         # CPU preset, writes benchmarks/train_cpu.{json,md}
    python scripts/bench_train.py --device cuda --output benchmarks/train_gpu

Every pipeline variant is built by nerfstudio's own Trainer on the same llff-data scene (fern by default) with the
same rays per batch and samples per ray, then trained for warm-up steps (compilation happens there) and timed
steps, the variants taking turns step by step (callbacks + ``Trainer.train_iteration``, the work of one ns-train
step). Reported: the median step time, rays/s, and MLP samples/s (coarse + fine samples per ray; the fine pass
re-evaluates the coarse samples, as in vanilla-nerf). The bare-MLP rows time forward, backward and Adam of one
NeRF MLP on the same number of samples per step: the arithmetic limit of a training step. A short quality check
trains the same narrow model twice, with exact fp32 matmuls and with the fast ones, and compares held-out PSNR.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import tyro

from nerfqat_plugin.tools.runs import PRESETS, Preset, machine, machine_line, sync, train_step, trainer_config

REPO = Path(__file__).resolve().parents[1]
FERN = REPO.parent / "shared/data/nerf_llff_data/fern"


@dataclass
class BenchTrain:
    """Measure training steps per second of vanilla-nerf, nerf-qat (quantization off / QAT) and the bare MLP."""

    data: Path = FERN
    """An LLFF scene folder (poses_bounds.npy + images_<factor>)."""
    downscale_factor: int = 16
    """Which images_<factor> folder to read (speed does not depend on it; it only sets what is loaded)."""
    device: Optional[str] = None
    """cpu or cuda; default: cuda when available."""
    rays: Optional[int] = None
    """Rays per batch for every variant (default: 256 on CPU, 1024 on CUDA)."""
    coarse_samples: int = 64
    """Coarse samples per ray (vanilla-nerf's default)."""
    fine_samples: int = 128
    """Importance samples per ray (vanilla-nerf's default)."""
    warmup: int = 3
    """Untimed steps per variant (first-use compilation happens here)."""
    steps: int = 6
    """Timed steps per variant, the variants taking turns; the median is reported."""
    skip: Tuple[str, ...] = ()
    """Variant names to leave out."""
    quality_steps: int = 300
    """Steps of each run of the quality check (0 skips it)."""
    output: Optional[Path] = None
    """Output prefix (.json and .md are written); default benchmarks/train_<device>."""

    def main(self) -> None:
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        rays = self.rays or (1024 if device == "cuda" else 256)
        if not (self.data / "poses_bounds.npy").exists():
            sys.exit(f"{self.data}: no poses_bounds.npy; pass --data with an LLFF scene folder")
        samples_per_ray = self.coarse_samples + (self.coarse_samples + self.fine_samples)
        rows: List[Dict[str, object]] = []

        def record(name: str, seconds: List[float], note: str) -> None:
            median = statistics.median(seconds)
            row = {
                "variant": name,
                "step_s": median,
                "step_s_all": seconds,
                "rays_per_s": rays / median,
                "samples_per_s": rays * samples_per_ray / median,
                "note": note,
            }
            rows.append(row)
            print(f"  {name}: {median * 1e3:.1f} ms/step, {row['samples_per_s'] / 1e3:.1f}k samples/s", flush=True)

        variants = [v for v in self._pipeline_variants(rays) if v[0] not in self.skip]
        trainers = {}
        for name, build, _ in variants:
            print(f"[{name}] building, {self.warmup} warm-up steps", flush=True)
            trainers[name] = self._warm_trainer(build(device))
        print(f"timing {self.steps} rounds, one step of each variant per round", flush=True)
        seconds = self._time_interleaved(trainers)
        for name, _, note in variants:
            record(name, seconds[name], note)
        del trainers
        gc.collect()
        for name, precision in (("bare MLP fp32", "fp32"), ("bare MLP bf16 autocast", "bf16")):
            if name in self.skip:
                continue
            print(f"[{name}] timing", flush=True)
            record(name, self._time_bare_mlp(device, rays * samples_per_ray, precision), "limit")

        quality = self._quality(device) if self.quality_steps > 0 else None
        result = {
            "command": shlex.join(["python", *sys.argv]),
            "machine": machine(device),
            "settings": {
                "rays_per_batch": rays,
                "coarse_samples": self.coarse_samples,
                "fine_samples": self.fine_samples,
                "mlp_samples_per_ray": samples_per_ray,
                "warmup_steps": self.warmup,
                "timed_steps": self.steps,
                "data": str(self.data),
                "downscale_factor": self.downscale_factor,
            },
            "rows": rows,
            "ratios": ratios(rows),
            "quality": quality,
        }
        out = self.output or REPO / "benchmarks" / f"train_{device}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(report(result))
        print(report(result))
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")

    # --- variants -----------------------------------------------------------------------------------------------

    def _config(self, base, device: str, preset: Preset, ndc: bool):
        from nerfqat_plugin.llff import LLFFDataParserConfig

        steps = self.warmup + self.steps + self.quality_steps + 1
        config = trainer_config(base, device, Path(tempfile.mkdtemp(prefix="bench_train_")), steps, preset)
        config.pipeline.datamanager.dataparser = LLFFDataParserConfig(
            data=self.data, downscale_factor=self.downscale_factor, ndc=ndc
        )
        return config

    def _pipeline_variants(self, rays: int) -> List[Tuple[str, Callable[[str], object], str]]:
        from nerfstudio.configs.method_configs import all_methods

        from nerfqat_plugin.registration import nerf_qat

        preset = dataclasses.replace(
            PRESETS["gpu"],
            coarse_samples=self.coarse_samples,
            fine_samples=self.fine_samples,
            rays=rays,
            sampler="hierarchical",  # vanilla-nerf's sampler: the same samples per ray
        )

        def vanilla(device: str):
            from nerfqat_plugin.offline import patch_lpips

            patch_lpips()  # vanilla-nerf downloads AlexNet for LPIPS when built; not needed to time training
            config = self._config(all_methods["vanilla-nerf"], device, preset, ndc=False)
            meta = config.pipeline.datamanager.dataparser.setup().get_dataparser_outputs("train").metadata
            config.pipeline.model.collider_params = {"near_plane": meta["near_plane"], "far_plane": meta["far_plane"]}
            return config

        def qat(device: str, **model):
            config = self._config(nerf_qat.config, device, preset, ndc=True)
            config.pipeline.model.quant.quant_start_step = 0  # time fake-quantized steps from the first one
            for key, value in model.items():
                if key == "enabled":
                    config.pipeline.model.quant.enabled = value
                else:
                    setattr(config.pipeline.model, key, value)
            return config

        return [
            ("vanilla-nerf", vanilla, "nerfstudio's method, fp32"),
            ("nerf-qat quant off", lambda d: qat(d, enabled=False), "same pipeline, plain fp32 Linear layers"),
            (
                "nerf-qat w8a8 eager fp32",
                lambda d: qat(d, quant_compile=False, quant_fast_matmul=False),
                "fake quantization without compile or fast matmuls",
            ),
            (
                "nerf-qat w8a8 compiled fp32",
                lambda d: qat(d, quant_fast_matmul=False),
                "compiled fake quantization, fp32 matmuls",
            ),
            ("nerf-qat w8a8", lambda d: qat(d), "the defaults: compiled, products chosen per machine ('auto')"),
        ]

    def _warm_trainer(self, config):
        """nerfstudio's Trainer for ``config``, set up and trained for the warm-up steps."""
        torch.manual_seed(0)
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        for step in range(self.warmup):
            train_step(trainer, step)
        sync(trainer.device)
        return trainer

    def _time_interleaved(self, trainers: Dict[str, object]) -> Dict[str, List[float]]:
        """Seconds of each timed step, the variants taking turns (one step each per round), so that a busy moment
        of the machine hits them alike."""
        times: Dict[str, List[float]] = {name: [] for name in trainers}
        for step in range(self.warmup, self.warmup + self.steps):
            for name, trainer in trainers.items():
                sync(trainer.device)  # type: ignore[attr-defined]
                start = time.perf_counter()
                train_step(trainer, step)
                sync(trainer.device)  # type: ignore[attr-defined]
                times[name].append(time.perf_counter() - start)
        return times

    def _time_bare_mlp(self, device: str, samples: int, precision: str) -> List[float]:
        from nerfqat_plugin.nerf.mlp import NeRFMLP
        from nerfqat_plugin.quant.config import QuantConfig

        torch.manual_seed(0)
        mlp = NeRFMLP(63, 27, QuantConfig(enabled=False)).to(device).train()
        optimizer = torch.optim.Adam(mlp.parameters(), lr=5e-4)
        pos, dirs = torch.randn(samples, 63, device=device), torch.randn(samples, 27, device=device)
        target = torch.rand(samples, 3, device=device)
        times = []
        for step in range(self.warmup + self.steps):
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                raw, trunk = mlp.density(pos)
                rgb = mlp.color(trunk, dirs)
            loss = (rgb.float() - target).square().mean() + raw.float().square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sync(device)
            if step >= self.warmup:
                times.append(time.perf_counter() - start)
        return times

    def _quality(self, device: str) -> Dict[str, object]:
        """Held-out PSNR after a short fixed run, fast matmuls on and off (same seed, narrow model)."""
        from nerfqat_plugin.registration import nerf_qat

        preset = dataclasses.replace(PRESETS["cpu"], rays=512, sampler="hierarchical")
        result: Dict[str, object] = {
            "steps": self.quality_steps,
            "model": f"4x128, 32+32 samples, 512 rays, QAT from step {self.quality_steps // 3}",
        }
        for fast in (False, "auto"):
            print(f"[quality] {self.quality_steps} steps, fast matmuls {fast}", flush=True)
            config = self._config(nerf_qat.config, device, preset, ndc=True)
            model = config.pipeline.model
            model.quant_fast_matmul = fast
            model.quant.quant_start_step = self.quality_steps // 3  # fp32 warm-up, then fake quantization
            config.optimizers["fields"]["scheduler"].max_steps = self.quality_steps
            torch.manual_seed(0)
            trainer = config.setup(local_rank=0, world_size=1)
            trainer.setup()
            start = time.perf_counter()
            for step in range(self.quality_steps):
                train_step(trainer, step)
            sync(trainer.device)
            seconds = time.perf_counter() - start
            trainer.pipeline.eval()
            metrics = trainer.pipeline.get_average_eval_image_metrics()
            key = "fast" if fast else "fp32"  # "fast": what 'auto' chose on this machine
            result[key] = {"psnr": float(metrics["psnr"]), "ssim": float(metrics["ssim"]), "train_s": seconds}
            del trainer
            gc.collect()
        result["psnr_difference_db"] = result["fast"]["psnr"] - result["fp32"]["psnr"]  # type: ignore[index]
        return result


def ratios(rows: List[Dict[str, object]]) -> Dict[str, float]:
    by = {r["variant"]: r for r in rows}
    out: Dict[str, float] = {}

    def speed(name: str) -> Optional[float]:
        return by[name]["samples_per_s"] if name in by else None  # type: ignore[return-value]

    qat, off, vanilla = speed("nerf-qat w8a8"), speed("nerf-qat quant off"), speed("vanilla-nerf")
    bare = max((s for s in (speed("bare MLP fp32"), speed("bare MLP bf16 autocast")) if s), default=None)
    if qat and vanilla:
        out["qat_vs_vanilla_nerf_speed"] = qat / vanilla
    if qat and off:
        out["qat_time_vs_quant_off_time"] = off / qat
    if qat and bare:
        out["qat_fraction_of_bare_mlp_limit"] = qat / bare
    eager = speed("nerf-qat w8a8 eager fp32")
    if qat and eager:
        out["qat_speedup_vs_eager_fp32_fake_quant"] = qat / eager
    return out


def report(result: Dict[str, object]) -> str:
    s = result["settings"]
    lines = [
        "# Training throughput",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine_line(result['machine'])}  ",
        f"Settings: {s['rays_per_batch']} rays per batch, {s['coarse_samples']}+{s['fine_samples']} samples "  # type: ignore[index]
        f"({s['mlp_samples_per_ray']} MLP samples per ray), default 8x256 MLP, median of {s['timed_steps']} steps "  # type: ignore[index]
        f"after {s['warmup_steps']} warm-up steps, the variants taking turns step by step (one process).",  # type: ignore[index]
        "",
        "| variant | ms/step | rays/s | MLP samples/s | note |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:  # type: ignore[union-attr]
        lines.append(
            f"| {r['variant']} | {r['step_s'] * 1e3:.1f} | {r['rays_per_s']:.0f} | {r['samples_per_s']:,.0f} "
            f"| {r['note']} |"
        )
    lines += ["", "| ratio | value |", "| --- | ---: |"]
    for k, v in result["ratios"].items():  # type: ignore[union-attr]
        lines.append(f"| {k} | {v:.2f} |")
    q = result.get("quality")
    if q:
        lines += [
            "",
            f"Quality check ({q['steps']} steps, {q['model']}, held-out views): "  # type: ignore[index]
            f"fp32 matmuls PSNR {q['fp32']['psnr']:.3f} dB, 'auto' matmuls {q['fast']['psnr']:.3f} dB, "  # type: ignore[index]
            f"difference {q['psnr_difference_db']:+.3f} dB.",  # type: ignore[index]
        ]
    decisions = result["machine"].get("kernel_decisions") or []  # type: ignore[union-attr]
    if decisions:
        lines += ["", "Kernel choices of 'auto' in this run:", ""] + [f"- {d}" for d in decisions]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    tyro.cli(BenchTrain).main()
