"""nerfacto-qat against nerfstudio's nerfacto at equal steps, measured in one run on this machine.

For each scene every variant is trained in this process by nerfstudio's Trainer with the same rays per batch,
schedule, seed and table sizes; the only difference is the model: nerfstudio's ``NerfactoModel`` (its LPIPS kept
offline), or nerfacto-qat with quantization off, or with its hash tables at 8, 4 or 2 bits and w8a8 MLPs (fake
quantization from ``--quant-start-step``). Reported per variant: training wall time, held-out PSNR / SSIM over all
held-out views (ns-eval's ``get_average_eval_image_metrics``, which also gives its rays/s), and the model's bytes:
fp32 (hash tables, MLPs and appearance embedding) and, for the quantized ones, what their codes take (tables at their
bits with a step per level, MLP weights at their bits with bf16 scales and fp32 biases, activation ranges; the
appearance embedding left out: rendering uses its mean, 32 floats), and what entropy coding could make of the tables'
codes (their order-0 entropy, and zlib -9 of the packed codes). Those byte counts are computed from the model's
tensors: nerfacto-qat has no integer export yet.

    python scripts/bench_nerfacto.py --output benchmarks/nerfacto_cpu_avx2
"""

from __future__ import annotations

import copy
import gc
import json
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import tyro

from nerfqat_plugin.offline import patch_lpips
from nerfqat_plugin.tools.runs import machine, machine_line, seed_everything, train_step, trainer_config

REPO = Path(__file__).resolve().parents[1]
FERN = REPO.parent / "shared/data/nerf_llff_data/fern"
VARIANTS: Dict[str, Optional[Dict[str, object]]] = {
    "nerfacto": None,
    "nerfacto-qat, quantization off": None,
    "tables 8 bit, w8a8 MLPs": {"table_bits": 8},
    "tables 8 bit, fp32 MLPs": {"table_bits": 8, "quantize": "tables"},
    "fp32 tables, w8a8 MLPs": {"table_bits": 8, "quantize": "mlps"},
    "tables 4 bit, w8a8 MLPs": {"table_bits": 4},
    "tables 2 bit, w8a8 MLPs": {"table_bits": 2},
    **{
        f"tables {bits} bit, w8a8 MLPs, a range per level": {"table_bits": bits, "input_range_per_level": True}
        for bits in (8, 4, 2)
    },
}
"""Variant name -> nerfacto-qat model settings with quantization on (None: quantization off)."""
DEFAULT_VARIANTS = (
    "nerfacto",
    "nerfacto-qat, quantization off",
    "tables 8 bit, w8a8 MLPs",
    "tables 4 bit, w8a8 MLPs",
    "tables 2 bit, w8a8 MLPs",
)


@dataclass
class BenchNerfacto:
    """Train nerfstudio's nerfacto and nerfacto-qat variants per scene at equal steps; PSNR, SSIM, bytes."""

    output: Path = Path("benchmarks/nerfacto_cpu")
    """Write <output>.json and <output>.md."""
    scenes: Tuple[str, ...] = ("fern", "object")
    """Scenes: fern (images_16 from ../shared, or --fern), object (Blender format, made here)."""
    variants: Tuple[str, ...] = DEFAULT_VARIANTS
    """Variants to train (names as in the report; the ablations: 'tables 8 bit, fp32 MLPs', 'fp32 tables, w8a8
    MLPs')."""
    steps: int = 300
    """Training steps of every run."""
    rays: int = 512
    """Rays per training batch."""
    log2_hashmap_size: int = 17
    """log2 of the entries per level of the field's hash grid (nerfstudio's default is 19)."""
    quant_start_step: int = 100
    """Step at which fake quantization starts (fp32 before)."""
    device: str = "cpu"
    """cpu or cuda."""
    fern: Path = FERN
    """The fern scene folder (poses_bounds.npy, images_16/)."""
    workdir: Optional[Path] = None
    """Keep the runs here (default: a temporary folder, deleted at the end)."""

    def main(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variant {unknown[0]!r}: choose from {list(VARIANTS)}")
        patch_lpips()  # nerfstudio's nerfacto would download AlexNet for LPIPS
        command = "python scripts/bench_nerfacto.py " + " ".join(sys.argv[1:])
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        result: Dict[str, object] = {"command": command.strip(), "commit": commit.stdout.strip() or "unknown"}
        result.update(steps=self.steps, rays=self.rays, log2_hashmap_size=self.log2_hashmap_size)
        result.update(quant_start_step=self.quant_start_step, scenes={}, machine=machine(self.device))
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(self.workdir or tmp)
            for scene in self.scenes:
                print(f"=== {scene}", flush=True)
                self._scene(scene, root / scene, result)
        print(report(result))

    def _write(self, result: Dict[str, object]) -> None:
        """The JSON and the report as they stand (after every variant: a stopped run keeps what it measured)."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
        self.output.with_suffix(".md").write_text(report(result))

    def _dataparser(self, scene: str, work: Path):
        from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

        from nerfqat_plugin.llff import LLFFDataParserConfig

        if scene == "fern":
            if not (self.fern / "poses_bounds.npy").is_file():
                raise FileNotFoundError(f"{self.fern}: no fern scene there (pass --fern FOLDER)")
            data = self.fern.resolve()
            return LLFFDataParserConfig(data=data, downscale_factor=16, ndc=False), "fern images_16 (252x189)"
        if scene == "object":
            data = work / "data"
            script = REPO / "scripts/make_object_scene.py"
            subprocess.run([sys.executable, str(script), "--output", str(data)], check=True, capture_output=True)
            return BlenderDataParserConfig(data=data), "object in a box, Blender format, 64x64, 24+6+6 views"
        raise ValueError(f"unknown scene {scene!r} (fern or object)")

    def _config(self, dataparser, work: Path, settings: Optional[Dict[str, object]], nerfstudio: bool):
        from nerfstudio.models.nerfacto import NerfactoModelConfig

        from nerfqat_plugin.registration import nerfacto_qat

        config = trainer_config(nerfacto_qat.config, self.device, work, self.steps)
        config.pipeline.datamanager.dataparser = dataparser
        config.pipeline.datamanager.train_num_rays_per_batch = self.rays
        config.pipeline.datamanager.eval_num_rays_per_batch = self.rays
        model = config.pipeline.model
        model.log2_hashmap_size = self.log2_hashmap_size
        model.eval_num_rays_per_chunk = 4096
        model.quant.enabled = settings is not None
        model.quant.quant_start_step = self.quant_start_step
        for name, value in (settings or {}).items():
            setattr(model, name, value)
        if not hasattr(dataparser, "ndc"):  # Blender: a white background, as nerfstudio's blender runs
            model.background_color = "white"
        if nerfstudio:  # the same settings on nerfstudio's own model class
            theirs = NerfactoModelConfig()
            for f in fields(theirs):
                if f.name != "_target":
                    setattr(theirs, f.name, copy.deepcopy(getattr(model, f.name)))
            config.pipeline.model = theirs
        config.steps_per_save = self.steps
        config.save_only_latest_checkpoint = True
        return config

    def _scene(self, scene: str, work: Path, result: Dict) -> None:
        work.mkdir(parents=True, exist_ok=True)
        dataparser, description = self._dataparser(scene, work)
        out: Dict[str, object] = {"description": description, "variants": {}}
        result["scenes"][scene] = out
        for variant in self.variants:
            print(f"[{scene}] training {variant}", flush=True)
            settings = VARIANTS[variant]
            config = self._config(dataparser, work / _slug(variant), settings, variant == "nerfacto")
            seed_everything(0)
            config.save_config()  # config.yml, as ns-train writes it (the exporter reads it)
            trainer = config.setup(local_rank=0, world_size=1)
            trainer.setup()
            seconds = 0.0
            for step in range(self.steps):
                start = time.perf_counter()
                train_step(trainer, step)
                seconds += time.perf_counter() - start
            trainer.save_checkpoint(self.steps - 1)
            del trainer
            gc.collect()
            # evaluated as ns-eval evaluates: loaded from its checkpoint (nerfstudio's proposal-weight annealing is
            # a training callback's state, which a loaded model starts without: an in-memory model renders otherwise)
            config_file = Path(config.get_base_dir()) / "config.yml"
            entry = {"train_s": seconds, **evaluate(load_pipeline(config_file))}
            out["variants"][variant] = entry  # type: ignore[index]
            print(f"  {json.dumps(entry)}", flush=True)
            self._write(result)
            gc.collect()
            if settings is not None and settings.get("quantize", "all") == "all":  # its export, measured the same way
                entry["export"] = export_and_evaluate(config_file, work / "exports" / _slug(variant))
                print(f"  export: {json.dumps(entry['export'])}", flush=True)
                self._write(result)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


@torch.no_grad()
def evaluate(pipeline) -> Dict[str, object]:
    """Held-out metrics over every held-out view (as ns-eval) and the model's bytes."""
    from nerfqat_plugin.quant.config import QuantConfig
    from nerfqat_plugin.quant.size import quantized_nbytes

    pipeline.eval()
    metrics = pipeline.get_average_eval_image_metrics()
    model = pipeline.model
    parts = [model.field, model.proposal_networks]
    fp32 = 4 * sum(p.numel() for part in parts for p in part.parameters())
    entry: Dict[str, object] = {
        "psnr": float(metrics["psnr"]),
        "ssim": float(metrics["ssim"]),
        "rays_per_s": float(metrics["num_rays_per_sec"]),
        "fp32_bytes": fp32,
    }
    config = getattr(model.config, "quant", None)
    if isinstance(config, QuantConfig) and config.enabled and model.config.quantize == "all":
        entry["code_bytes"] = sum(quantized_nbytes(part, config) for part in parts)
        entry["tables"] = table_statistics(parts)
    return entry


def load_pipeline(config: Path):
    """The pipeline of a saved run or export, loaded as ns-eval loads it."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    return pipeline


def export_and_evaluate(config: Path, folder: Path) -> Dict[str, object]:
    """Export a run into ``folder`` with ns-export-int8's entry point, then held-out PSNR / SSIM / rays/s of the
    export (loaded alone, as ns-eval loads it) and its bytes: the file, and its tensors raw."""
    from nerfqat_plugin.export import ExportInt8
    from nerfqat_plugin.int8_format import read_file

    out = ExportInt8(load_config=config, output_dir=folder, overwrite=True).run()
    pipeline = load_pipeline(out / "config.yml")
    pipeline.eval()
    metrics = pipeline.get_average_eval_image_metrics()
    tensors, _ = read_file(out / "model.safetensors")
    return {
        "psnr": float(metrics["psnr"]),
        "ssim": float(metrics["ssim"]),
        "rays_per_s": float(metrics["num_rays_per_sec"]),
        "file_bytes": (out / "model.safetensors").stat().st_size,
        "raw_tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
    }


def table_statistics(parts) -> Dict[str, float]:
    """What entropy coding could make of the hash tables' codes: their packed bytes, the order-0 entropy of the
    codes of each table (bytes, a bound for a coder with one fixed code distribution per table), and zlib -9 of each
    table's packed codes."""
    from nerfqat_plugin.quant.pack import pack_bits
    from nerfqat_plugin.quant.table import QuantTable

    tables = {id(m): m for part in parts for m in part.modules() if isinstance(m, QuantTable)}.values()
    packed = entropy = deflated = 0.0
    for table in tables:
        codes, _ = table.codes()
        values = (codes.reshape(-1).long() + table.qmax).cpu()
        data = pack_bits(values, table.bits).numpy().tobytes()
        p = torch.bincount(values).double() / values.numel()
        p = p[p > 0]
        packed += len(data)
        entropy += float(-(p * torch.log2(p)).sum()) * values.numel() / 8
        deflated += len(zlib.compress(data, 9))
    return {"packed_bytes": packed, "entropy_bytes": entropy, "zlib_bytes": deflated}


def report(result: Dict) -> str:
    lines = [
        "# nerfacto-qat vs nerfstudio's nerfacto, equal steps",
        "",
        f"Commit: {result.get('commit', 'unknown')}  ",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine_line(result['machine'])}  ",
        f"{result['steps']} steps per run, {result['rays']} rays per batch, field hash grid 2^"
        f"{result['log2_hashmap_size']} entries per level (nerfstudio's proposal grids), fake quantization from step "
        f"{result['quant_start_step']}; otherwise nerfstudio's nerfacto settings (PyTorch hash grid and MLPs, "
        "mixed precision off).",
        "",
        "Code bytes are computed from the model's tensors (tables at their bits plus a step per level, MLP weights at "
        "8 bits with bf16 scales and fp32 biases, activation ranges; the appearance embedding is left out, as "
        "rendering uses its mean, 32 floats). Tables: the hash tables' packed codes, their order-0 entropy (a bound "
        "for one fixed code distribution per table), zlib -9 of each table. Every run is evaluated loaded from its "
        "checkpoint, as ns-eval evaluates it, in this process. Exports: ns-export-int8's file (tensors "
        "coded (XZ or Zstandard) where smaller) loaded alone and evaluated the same way.",
    ]
    for scene, s in result["scenes"].items():
        base = s["variants"].get("nerfacto")
        lines += [
            "",
            f"## {scene}: {s['description']}",
            "",
            "| variant | train s | PSNR | vs nerfacto | SSIM | eval rays/s | fp32 MB | code MB | vs nerfacto fp32 | "
            "tables: packed / entropy / zlib MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, e in s["variants"].items():
            dpsnr = f"{e['psnr'] - base['psnr']:+.2f}" if base else ""
            code = e.get("code_bytes")
            ratio = f"{code / base['fp32_bytes']:.3f}" if base and code else ""
            lines.append(
                f"| {name} | {e['train_s']:.0f} | {e['psnr']:.2f} | {dpsnr} | {e['ssim']:.3f} | "
                f"{e['rays_per_s']:,.0f} | {e['fp32_bytes'] / 1e6:.2f} | "
                f"{'' if code is None else f'{code / 1e6:.3f}'} | {ratio} | {_tables_cell(e.get('tables'))} |"
            )
        exported = {name: e for name, e in s["variants"].items() if "export" in e}
        if exported:
            lines += [
                "",
                "| integer export of | PSNR | vs fake-quantized | vs nerfacto | SSIM | eval rays/s | vs nerfacto fp32 "
                "| file MB (coded) | tensors raw MB | file / nerfacto fp32 |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for name, e in exported.items():
                x = e["export"]
                vs = f"{x['psnr'] - base['psnr']:+.2f}" if base else ""
                speed = f"{x['rays_per_s'] / base['rays_per_s']:.2f}x" if base else ""
                share = f"{x['file_bytes'] / base['fp32_bytes']:.3f}" if base else ""
                lines.append(
                    f"| {name} | {x['psnr']:.2f} | {x['psnr'] - e['psnr']:+.3f} | {vs} | {x['ssim']:.3f} | "
                    f"{x['rays_per_s']:,.0f} | {speed} | {x['file_bytes'] / 1e6:.3f} | "
                    f"{x['raw_tensor_bytes'] / 1e6:.3f} | {share} |"
                )
    return "\n".join(lines) + "\n"


def _tables_cell(tables: Optional[Dict[str, float]]) -> str:
    if not tables:
        return ""
    return " / ".join(f"{tables[k] / 1e6:.3f}" for k in ("packed_bytes", "entropy_bytes", "zlib_bytes"))


def entrypoint(argv: Optional[List[str]] = None) -> None:
    tyro.cli(BenchNerfacto, args=argv).main()


if __name__ == "__main__":
    entrypoint()
