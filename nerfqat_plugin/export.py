"""ns-export-int8: write a trained nerf-qat run as integer weights in a small, self-contained nerfstudio run.

The output directory holds ``model.safetensors`` (the integer weights, see ``int8_format``), a ``config.yml``
that ns-eval, ns-render and ns-viewer load, and a ``nerfstudio_models/`` checkpoint that holds only the step
(nerfstudio's loaders expect one); the trained fp32 weights are not copied.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import shutil
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict

import torch
import tyro
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from rich.table import Table

from nerfqat_plugin.int8_format import WEIGHTS_FILE, Int8ExportError, architecture, mlp_tensors, write_file
from nerfqat_plugin.quant.layers import QuantLinear


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """Metadata from the dataparser, reduced to what JSON can hold."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


@dataclass
class Int8ExportTrainerConfig(TrainerConfig):
    """Config of an integer export: its base directory is the export directory itself (where config.yml is),
    so nerfstudio's tools (ns-viewer creates the base directory) find everything inside it."""

    def get_base_dir(self) -> Path:
        return Path(self.output_dir)


@dataclass
class ExportInt8:
    """Export a trained nerf-qat run as integer weights that ns-eval, ns-render and ns-viewer can load."""

    load_config: Path
    """config.yml of the trained nerf-qat run."""
    output_dir: Path
    """Directory to create: config.yml, model.safetensors and nerfstudio_models/."""
    overwrite: bool = False
    """Replace output_dir if it already exists."""

    def main(self) -> None:
        try:
            self.run()
        except (Int8ExportError, FileNotFoundError, FileExistsError, ValueError) as err:
            CONSOLE.print(f"[bold red]ns-export-int8: {err}")
            sys.exit(1)

    def run(self) -> Path:
        from nerfstudio.utils.eval_utils import eval_setup

        from nerfqat_plugin.model import NeRFQATModel

        if not self.load_config.is_file():
            raise FileNotFoundError(f"{self.load_config}: config file not found (pass the run's config.yml)")
        out = self.output_dir
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a directory (choose another --output-dir)")
        if out.exists() and any(out.iterdir()) and not self.overwrite:
            raise FileExistsError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
        if out.resolve() in self.load_config.resolve().parents:
            raise ValueError(f"{out}: holds the run being exported (choose another --output-dir)")

        config, pipeline, ckpt_path, step = eval_setup(self.load_config, test_mode="inference")
        model = pipeline.model
        if not isinstance(model, NeRFQATModel):
            raise ValueError(f"{self.load_config}: method {config.method_name!r} is not nerf-qat")
        if model.config.int8_weights is not None:
            raise ValueError(f"{self.load_config}: this run is already an integer export")
        quant = model.config.quant
        if not quant.enabled or step < quant.quant_start_step:
            CONSOLE.print(
                f"[yellow]warning: {self.load_config} never trained with fake quantization (enabled={quant.enabled}, "
                f"step {step} < quant_start_step {quant.quant_start_step}): this export is post-training quantization"
                " and will not match the run's own evaluation"
            )
        tensors: Dict[str, torch.Tensor] = {}
        for prefix, mlp in zip(("coarse.", "fine."), model.mlps, strict=True):
            tensors.update(mlp_tensors(mlp, prefix, quant))

        outputs = pipeline.datamanager.train_dataparser_outputs
        metadata = {
            "architecture": architecture(model.config, model.field_coarse.encoding),
            "quant": dataclasses.asdict(quant),
            "dataparser": {
                "transform": outputs.dataparser_transform.tolist(),
                "scale": float(outputs.dataparser_scale),
            },
            "scene": _jsonable(model.kwargs.get("metadata") or {}),
            "step": int(step),
            "source_checkpoint_sha256": _sha256(ckpt_path),
        }

        out_abs = out.resolve()
        out_abs.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_abs.name}.", dir=out_abs.parent))
        try:
            write_file(staging / WEIGHTS_FILE, tensors, metadata)
            (staging / "nerfstudio_models").mkdir()
            torch.save({"step": int(step), "pipeline": {}}, staging / "nerfstudio_models" / f"step-{step:09d}.ckpt")
            (staging / "config.yml").write_text(yaml.dump(self._export_config(config, out_abs)), "utf8")
            staging.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
            (staging / WEIGHTS_FILE).chmod(0o644)
            if out_abs.exists():
                shutil.rmtree(out_abs)
            staging.rename(out_abs)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

        self._print_table(tensors, model, out_abs / WEIGHTS_FILE)
        return out_abs

    @staticmethod
    def _export_config(config: TrainerConfig, out_abs: Path) -> "Int8ExportTrainerConfig":
        """The run's config, pointed at the export: integer weights file and checkpoint folder inside it."""
        cfg = Int8ExportTrainerConfig(**{f.name: copy.deepcopy(getattr(config, f.name)) for f in fields(config)})
        cfg.pipeline.model.int8_weights = out_abs / WEIGHTS_FILE
        cfg.output_dir = out_abs
        cfg.relative_model_dir = Path("nerfstudio_models")
        cfg.load_dir = None
        cfg.load_checkpoint = None
        return cfg

    @staticmethod
    def _print_table(tensors: Dict[str, torch.Tensor], model, path: Path) -> None:
        quant = model.config.quant
        table = Table(title=f"Integer export: {path}")
        for column in ("tensor", "shape", "dtype / bits", "bytes"):
            table.add_column(column)
        shapes = {
            f"{prefix}{name}.weight": tuple(m.weight.shape)
            for prefix, mlp in zip(("coarse.", "fine."), model.mlps, strict=True)
            for name, m in mlp.named_modules()
            if isinstance(m, QuantLinear)
        }
        for name, t in tensors.items():
            packed = name in shapes
            bits = f"{quant.weight_bits}-bit packed" if packed else str(t.dtype).replace("torch.", "")
            shape = "x".join(map(str, shapes[name] if packed else t.shape))
            table.add_row(name, shape, bits, f"{t.numel() * t.element_size():,}")
        CONSOLE.print(table)
        size = path.stat().st_size
        fp32 = model.size_metrics()["model_bytes_fp32"]
        CONSOLE.print(
            f"{path.name}: {size:,} bytes ({size / 1e6:.3f} MB) vs fp32 weights {fp32:,.0f} bytes "
            f"({fp32 / 1e6:.3f} MB): {fp32 / size:.2f}x smaller"
        )


def entrypoint() -> None:
    """Console script ``ns-export-int8``."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(ExportInt8).main()


if __name__ == "__main__":
    entrypoint()
