"""nerfacto-qat against nerfstudio's nerfacto at equal steps, measured in one run on this machine.

For each scene every variant is trained in this process by nerfstudio's Trainer with the same rays per batch,
schedule, seed and table sizes; the only difference is the model: nerfstudio's ``NerfactoModel`` (its LPIPS kept
offline), or nerfacto-qat with quantization off, or with its hash tables at 8, 4 or 2 bits and w8a8 MLPs (fake
quantization from ``--quant-start-step``), or an ablation; and, for reference, nerf-qat (its CPU preset network
at w8a8, the same rays, steps and QAT start). Every run is evaluated loaded from its checkpoint, as
ns-eval evaluates it: held-out PSNR / SSIM over all held-out views (``get_average_eval_image_metrics``, which also
gives its rays/s), and the model's bytes: fp32 (hash tables, MLPs and appearance embedding) and, for the quantized
ones, what their codes take and what entropy coding could make of the tables' codes (order-0 entropy, zlib -9).
The quantized runs of the first seed are exported with ns-export-int8 and the export is measured the same way
(loaded alone), with its file and raw tensor bytes.

``--seeds`` trains every variant once per seed (seed-major: all variants of the first seed first); differences to
nerfacto are paired (the same seed's nerfacto), and a table across seeds gives their mean and range. ``--append``
adds rows to an existing report of the same settings (a longer study in several sittings).

    python scripts/bench_nerfacto.py --output benchmarks/nerfacto_cpu_avx2
    python scripts/bench_nerfacto.py --scenes fern --seeds 1 2 --variants nerfacto "tables 8 bit, w8a8 MLPs" \
        --append --output benchmarks/nerfacto_cpu_avx2
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Dict, List, Literal, Mapping, Optional, Tuple

import torch
import tyro
from benchlib.figures import pyplot
from benchlib.paper import TABLE2_FERN, TABLE2_SIZES
from benchlib.report import commit, provenance
from benchlib.variants import catalogue

from nerfqat_plugin.offline import patch_lpips
from nerfqat_plugin.tools.runs import PRESETS, machine, machine_line, seed_everything, train_step, trainer_config

REPO = Path(__file__).resolve().parents[1]
FERN = REPO.parent / "shared/data/nerf_llff_data/fern"


Method = Literal["nerfacto-qat", "nerfacto", "nerf-qat"]


@dataclass(frozen=True)
class NerfactoVariant:
    """A model this script trains: nerfacto-qat with quantization off or with settings, nerfstudio's nerfacto, or
    nerf-qat as a reference."""

    name: str
    settings: Optional[Mapping[str, object]] = None
    """Model settings with quantization on (None: quantization off)."""
    method: Method = "nerfacto-qat"
    """nerfacto-qat; 'nerfacto': nerfstudio's own NerfactoModel with the same settings (quantization off);
    'nerf-qat': nerf-qat's CPU preset network (``NERF_QAT_PRESET``) with its default sampler, on the same rays per
    batch, steps and QAT start (forward-facing scenes in NDC, as nerf-qat trains them)."""

    @property
    def quantized(self) -> bool:
        """Whether tables and MLPs are both quantized (a run that can be exported and its codes counted)."""
        return self.settings is not None and self.settings.get("quantize", "all") == "all"


VARIANTS: Dict[str, NerfactoVariant] = catalogue(
    NerfactoVariant("nerfacto", method="nerfacto"),
    NerfactoVariant("nerfacto-qat, quantization off"),
    NerfactoVariant("tables 8 bit, w8a8 MLPs", {"table_bits": 8}),
    NerfactoVariant("tables 8 bit, fp32 MLPs", {"table_bits": 8, "quantize": "tables"}),
    NerfactoVariant("fp32 tables, w8a8 MLPs", {"table_bits": 8, "quantize": "mlps"}),
    NerfactoVariant("tables 4 bit, w8a8 MLPs", {"table_bits": 4}),
    NerfactoVariant("tables 2 bit, w8a8 MLPs", {"table_bits": 2}),
    *(
        NerfactoVariant(
            f"tables {bits} bit, w8a8 MLPs, a range per level", {"table_bits": bits, "input_range_per_level": True}
        )
        for bits in (8, 4, 2)
    ),
    NerfactoVariant("nerf-qat w8a8 (4x128 MLP, occupancy sampler)", {}, method="nerf-qat"),
)
NERF_QAT_PRESET = "cpu"
"""nerf-qat's network for its reference row: ``tools.runs.PRESETS`` (4x128, 64 occupancy bins)."""
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
    seeds: Tuple[int, ...] = (0,)
    """Train every variant once per seed; rows of seeds other than 0 are named '<variant>, seed N'."""
    export: bool = True
    """Export the quantized runs of the first seed and evaluate the exports."""
    append: bool = False
    """Add this run's rows to OUTPUT.json's (it must have the same steps, rays, table size and QAT start)."""
    report_only: bool = False
    """Rebuild OUTPUT.md and OUTPUT_size_psnr.png from OUTPUT.json; train nothing."""
    reevaluate: Optional[Path] = None
    """The JSON of an earlier run of this script whose runs --workdir kept: evaluate them again with this code
    (each loaded from its checkpoint, the exported ones exported again) into OUTPUT, training figures kept; train
    nothing."""

    def main(self) -> None:
        if self.report_only:
            result = json.loads(self.output.with_suffix(".json").read_text())
            self._write(result, json_too=False)
            print(self.output.with_suffix(".md").read_text())
            return
        if self.reevaluate is not None:
            self._reevaluate(json.loads(self.reevaluate.read_text()))
            return
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variant {unknown[0]!r}: choose from {list(VARIANTS)}")
        patch_lpips()  # nerfstudio's nerfacto would download AlexNet for LPIPS
        command = "python scripts/bench_nerfacto.py " + " ".join(sys.argv[1:])
        result: Dict[str, object] = {"command": command.strip(), "commit": commit()}
        result.update(steps=self.steps, rays=self.rays, log2_hashmap_size=self.log2_hashmap_size)
        result.update(quant_start_step=self.quant_start_step, scenes={}, machine=machine(self.device))
        if self.append:
            result = self._appended_to(result)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(self.workdir or tmp)
            for scene in self.scenes:
                print(f"=== {scene}", flush=True)
                self._scene(scene, root / scene, result)
        print(report(result))

    def _reevaluate(self, result: Dict) -> None:
        """Every row of ``result`` evaluated again from the run --workdir kept (see ``reevaluate``)."""
        if self.workdir is None:
            raise SystemExit("--reevaluate needs the --workdir its runs were kept in")
        patch_lpips()
        command = "python scripts/bench_nerfacto.py " + " ".join(sys.argv[1:])
        result["reevaluated"] = {"command": command, "commit": commit(), "machine": machine(self.device)}
        for scene, s in result["scenes"].items():
            for row, entry in s["variants"].items():
                work = self.workdir / scene
                configs = sorted((work / _slug(row)).glob("run/*/run/config.yml"))
                if len(configs) != 1:
                    raise SystemExit(f"{work / _slug(row)}: no single kept run of {row!r} ({len(configs)} found)")
                print(f"[{scene}] evaluating {row} again", flush=True)
                entry.update(evaluate(load_pipeline(configs[0])))
                if "export" in entry:
                    entry["export"] = export_and_evaluate(configs[0], work / "exports" / _slug(row))
                print(f"  {json.dumps(entry)}", flush=True)
                self._write(result)
                gc.collect()

    def _appended_to(self, new: Dict[str, object]) -> Dict[str, object]:
        """OUTPUT.json's result with this run's command and commit added, after checking its settings are ours."""
        path = self.output.with_suffix(".json")
        if not path.is_file():
            raise SystemExit(f"--append: {path} does not exist (run without --append first)")
        old = json.loads(path.read_text())
        keys = ("steps", "rays", "log2_hashmap_size", "quant_start_step")
        differ = [f"{k} {old.get(k)} there, {new[k]} here" for k in keys if old.get(k) != new[k]]
        if differ:
            raise SystemExit(f"--append: {path} was measured with other settings: {'; '.join(differ)}")
        old.setdefault("appended", []).append({k: new[k] for k in ("command", "commit", "machine")})
        return old

    def _write(self, result: Dict[str, object], json_too: bool = True) -> None:
        """The JSON, figure and report as they stand (after every variant: a stopped run keeps what it measured)."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if json_too:
            self.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
        figure = f"{self.output.name}_size_psnr.png"
        size_quality_figure(result, self.output.parent / figure)
        self.output.with_suffix(".md").write_text(report(result, figure))

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

    def _config(self, dataparser, work: Path, variant: NerfactoVariant):
        from nerfstudio.models.nerfacto import NerfactoModelConfig

        from nerfqat_plugin.registration import nerfacto_qat

        if variant.method == "nerf-qat":
            return self._nerf_qat_config(dataparser, work)
        config = trainer_config(nerfacto_qat.config, self.device, work, self.steps)
        config.pipeline.datamanager.dataparser = dataparser
        config.pipeline.datamanager.train_num_rays_per_batch = self.rays
        config.pipeline.datamanager.eval_num_rays_per_batch = self.rays
        model = config.pipeline.model
        model.log2_hashmap_size = self.log2_hashmap_size
        model.eval_num_rays_per_chunk = 4096
        model.quant.enabled = variant.settings is not None
        model.quant.quant_start_step = self.quant_start_step
        for name, value in (variant.settings or {}).items():
            setattr(model, name, value)
        if not hasattr(dataparser, "ndc"):  # Blender: a white background, as nerfstudio's blender runs
            model.background_color = "white"
        if variant.method == "nerfacto":  # the same settings on nerfstudio's own model class
            theirs = NerfactoModelConfig()
            for f in fields(theirs):
                if f.name != "_target":
                    setattr(theirs, f.name, copy.deepcopy(getattr(model, f.name)))
            config.pipeline.model = theirs
        config.steps_per_save = self.steps
        config.save_only_latest_checkpoint = True
        return config

    def _nerf_qat_config(self, dataparser, work: Path):
        """nerf-qat's reference run: its CPU preset network, this script's rays, steps and QAT start."""
        from nerfqat_plugin.registration import nerf_qat

        config = trainer_config(nerf_qat.config, self.device, work, self.steps, PRESETS[NERF_QAT_PRESET])
        ndc = hasattr(dataparser, "ndc")
        config.pipeline.datamanager.dataparser = dataclasses.replace(dataparser, ndc=True) if ndc else dataparser
        config.pipeline.datamanager.train_num_rays_per_batch = self.rays
        config.pipeline.datamanager.eval_num_rays_per_batch = self.rays
        model = config.pipeline.model
        model.quant.quant_start_step = self.quant_start_step
        if not ndc:  # Blender: nerfstudio's near/far for its synthetic scenes, a white background
            model.collider_params = {"near_plane": 2.0, "far_plane": 6.0}
            model.background_color = "white"
        config.steps_per_save = self.steps
        config.save_only_latest_checkpoint = True
        return config

    def _scene(self, scene: str, work: Path, result: Dict) -> None:
        work.mkdir(parents=True, exist_ok=True)
        dataparser, description = self._dataparser(scene, work)
        out = result["scenes"].setdefault(scene, {"description": description, "variants": {}})
        for seed, variant in ((seed, variant) for seed in self.seeds for variant in self.variants):
            row = row_name(variant, seed)
            print(f"[{scene}] training {row}", flush=True)
            config = self._config(dataparser, work / _slug(row), VARIANTS[variant])
            seed_everything(seed)
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
            entry = {"variant": variant, "seed": seed, "train_s": seconds, **evaluate(load_pipeline(config_file))}
            out["variants"][row] = entry  # type: ignore[index]
            print(f"  {json.dumps(entry)}", flush=True)
            self._write(result)
            gc.collect()
            # a quantized run's export, measured the same way
            if VARIANTS[variant].quantized and self.export and seed == self.seeds[0]:
                entry["export"] = export_and_evaluate(config_file, work / "exports" / _slug(row))
                print(f"  export: {json.dumps(entry['export'])}", flush=True)
                self._write(result)


def row_name(variant: str, seed: int) -> str:
    """A run's row in the report: the variant for seed 0, '<variant>, seed N' otherwise."""
    return variant if seed == 0 else f"{variant}, seed {seed}"


def _baseline(variants: Dict[str, Dict], entry: Dict) -> Optional[Dict]:
    """The nerfacto row a row is compared with: the same seed's (seed 0's where that seed has none)."""
    return variants.get(row_name("nerfacto", entry.get("seed", 0))) or variants.get("nerfacto")


def across_seeds(variants: Dict[str, Dict]) -> List[Dict[str, object]]:
    """Per variant trained with more than one seed: seeds, PSNR mean / min / max, and the paired differences to
    nerfacto (each seed minus the same seed's nerfacto, over the seeds where both ran): mean, min, max."""
    by_variant: Dict[str, List[Dict]] = {}
    for name, e in variants.items():  # rows written before seeds were recorded: the row name, seed 0
        by_variant.setdefault(e.get("variant", name), []).append(e)
    rows = []
    for name, entries in by_variant.items():
        if len(entries) < 2:
            continue
        psnr = [e["psnr"] for e in entries]
        nerfacto = {e.get("seed", 0): e["psnr"] for e in by_variant.get("nerfacto", [])}
        paired = [e["psnr"] - nerfacto[e.get("seed", 0)] for e in entries if e.get("seed", 0) in nerfacto]
        row: Dict[str, object] = {"variant": name, "seeds": sorted(e.get("seed", 0) for e in entries)}
        row.update(psnr_mean=sum(psnr) / len(psnr), psnr_min=min(psnr), psnr_max=max(psnr))
        if paired and name != "nerfacto":
            row.update(paired_n=len(paired), vs_nerfacto_mean=sum(paired) / len(paired))
            row.update(vs_nerfacto_min=min(paired), vs_nerfacto_max=max(paired))
        rows.append(row)
    return rows


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
    nerf_qat = hasattr(model, "mlps")  # nerf-qat: its MLPs; nerfacto: its field and proposal networks
    parts = list(model.mlps) if nerf_qat else [model.field, model.proposal_networks]
    fp32 = 4 * sum(p.numel() for part in parts for p in part.parameters())
    entry: Dict[str, object] = {
        "psnr": float(metrics["psnr"]),
        "ssim": float(metrics["ssim"]),
        "rays_per_s": float(metrics["num_rays_per_sec"]),
        "fp32_bytes": fp32,
    }
    config = getattr(model.config, "quant", None)
    if isinstance(config, QuantConfig) and config.enabled and getattr(model.config, "quantize", "all") == "all":
        entry["code_bytes"] = sum(quantized_nbytes(part, config) for part in parts)
        if not nerf_qat:
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


def report(result: Dict, figure: Optional[str] = None) -> str:
    lines = [
        "# nerfacto-qat vs nerfstudio's nerfacto, equal steps",
        "",
        f"Commit: {result.get('commit', 'unknown')}  ",
        *provenance(result),
        *(
            f"Rows added by `{a['command']}` at {a['commit']} on: {machine_line(a['machine'])}  "
            for a in result.get("appended", [])
        ),
        *(
            f"Every run evaluated again (training figures kept, the evaluations and exports replaced) by "
            f"`{r['command']}` at {r['commit']} on: {machine_line(r['machine'])}  "
            for r in [result["reevaluated"]]
            if "reevaluated" in result
        ),
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
        lines += [
            "",
            f"## {scene}: {s['description']}",
            "",
            "| variant | train s | PSNR | vs nerfacto | SSIM | eval rays/s | fp32 MB | code MB | vs nerfacto fp32 | "
            "tables: packed / entropy / zlib MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, e in s["variants"].items():
            base = _baseline(s["variants"], e)
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
                base, x = _baseline(s["variants"], e), e["export"]
                vs = f"{x['psnr'] - base['psnr']:+.2f}" if base else ""
                speed = f"{x['rays_per_s'] / base['rays_per_s']:.2f}x" if base else ""
                share = f"{x['file_bytes'] / base['fp32_bytes']:.3f}" if base else ""
                lines.append(
                    f"| {name} | {x['psnr']:.2f} | {x['psnr'] - e['psnr']:+.3f} | {vs} | {x['ssim']:.3f} | "
                    f"{x['rays_per_s']:,.0f} | {speed} | {x['file_bytes'] / 1e6:.3f} | "
                    f"{x['raw_tensor_bytes'] / 1e6:.3f} | {share} |"
                )
        seeds = across_seeds(s["variants"])
        if seeds:
            lines += [
                "",
                "Across seeds (vs nerfacto: each seed's PSNR minus the same seed's nerfacto):",
                "",
                "| variant | seeds | PSNR mean | PSNR min .. max | vs nerfacto mean | vs nerfacto min .. max |",
                "|---|---|---:|---:|---:|---:|",
            ]
            for r in seeds:
                paired = (
                    (f"{r['vs_nerfacto_mean']:+.2f} ({r['paired_n']} pairs)", f"{r['vs_nerfacto_min']:+.2f} .. "
                     f"{r['vs_nerfacto_max']:+.2f}")
                    if "paired_n" in r else ("", "")
                )  # fmt: skip
                lines.append(
                    f"| {r['variant']} | {', '.join(map(str, r['seeds']))} | {r['psnr_mean']:.2f} | "
                    f"{r['psnr_min']:.2f} .. {r['psnr_max']:.2f} | {paired[0]} | {paired[1]} |"
                )
    if figure:
        lines += [
            "",
            f"![size vs PSNR]({figure})",
            "",
            "Right panel, quoted from the seed paper's Table 2: "
            + " and ".join(f"{r.name} {r.bytes / 1e6:g} MB / {r.psnr:.2f} dB" for r in TABLE2_FERN)
            + " on fern (1/8 resolution, 50k+ GPU steps: compare sizes across the panels, not PSNR); "
            + ", ".join(f"{name} {size / 1e6:g} MB" for name, size in TABLE2_SIZES)
            + " as sizes only.",
        ]
    return "\n".join(lines) + "\n"


def size_quality_figure(result: Dict, path: Path) -> None:
    """Held-out PSNR against model bytes (log scale), two panels on one size axis: what this script measured (per
    scene, seed 0: nerfstudio's nerfacto at its fp32 bytes; each quantized run's export at its coded file size, with
    its raw tensor bytes joined by a line; a quantized run not exported at its code bytes), and the seed paper's
    Table 2, quoted (fern PSNR for NeRF and NeRF-QAT; sizes alone for the grid methods)."""
    plt = pyplot()
    fig, (ours, quoted) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for scene, s in result["scenes"].items():
        for name, e in s["variants"].items():
            if e.get("seed", 0) != 0:
                continue
            x = e.get("export")
            if x:
                ours.plot([x["raw_tensor_bytes"], x["file_bytes"]], [x["psnr"]] * 2, "-", color="0.6", lw=1)
                ours.scatter(x["raw_tensor_bytes"], x["psnr"], facecolors="none", edgecolors="C1", s=30)
                ours.scatter(x["file_bytes"], x["psnr"], color="C1", s=30)
                point = (x["file_bytes"], x["psnr"])
            elif e.get("code_bytes"):
                point = (e["code_bytes"], e["psnr"])
                ours.scatter(*point, marker="x", color="C2")
            elif e.get("variant", name) == "nerfacto":
                point = (e["fp32_bytes"], e["psnr"])
                ours.scatter(*point, marker="s", color="C0")
            else:
                continue
            ours.annotate(f"{scene}: {name}", point, fontsize=7, textcoords="offset points", xytext=(4, 4))
    ours.set_title(
        f"measured: {result['steps']} steps, {result['rays']} rays, field tables 2^{result['log2_hashmap_size']}\n"
        "square: nerfacto fp32; dot: integer export, coded (ring: raw); x: codes, not exported",
        fontsize=8,
    )
    ours.set_ylabel("held-out PSNR (dB)")
    for row in TABLE2_FERN:
        quoted.scatter(row.bytes, row.psnr, marker="*", s=90, color="C3")
        quoted.annotate(row.name, (row.bytes, row.psnr), fontsize=8, textcoords="offset points", xytext=(4, 4))
    for (name, size), side in zip(TABLE2_SIZES, ("right", "left", "left"), strict=True):
        quoted.axvline(size, color="0.5", ls="--", lw=1)
        quoted.text(size, 0.02, f" {name} ", rotation=90, fontsize=8, ha=side, transform=quoted.get_xaxis_transform())
    quoted.set_title(
        "seed paper, Table 2 (quoted): fern, 50k+ GPU steps\ndashed: sizes only (their PSNR there are not fern's)",
        fontsize=8,
    )
    for ax in (ours, quoted):
        ax.set_xscale("log")
        ax.set_xlabel("model bytes (log scale)")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _tables_cell(tables: Optional[Dict[str, float]]) -> str:
    if not tables:
        return ""
    return " / ".join(f"{tables[k] / 1e6:.3f}" for k in ("packed_bytes", "entropy_bytes", "zlib_bytes"))


def entrypoint(argv: Optional[List[str]] = None) -> None:
    tyro.cli(BenchNerfacto, args=argv).main()


if __name__ == "__main__":
    entrypoint()
