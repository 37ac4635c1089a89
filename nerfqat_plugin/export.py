"""ns-export-int8: a trained nerf-qat or nerfacto-qat run as integer weights in a self-contained nerfstudio run.

The output directory holds ``model.safetensors`` (the integer weights, see ``int8_format``), ``cameras.json`` (the
scene without its images, see ``scene_record``), a ``config.yml`` that ns-eval, ns-render and ns-viewer load, and a
``nerfstudio_models/`` checkpoint that holds only the step (nerfstudio's loaders expect one); the trained fp32
weights are not copied. The folder can be copied or moved: its config finds everything relative to itself.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import tyro
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from rich.table import Table

from nerfqat_plugin.int8_format import WEIGHTS_FILE, Int8ExportError, write_file
from nerfqat_plugin.integer_export import IntegerExport
from nerfqat_plugin.scene_record import (
    RECORD_FILE,
    SPLITS,
    ExportSceneDataParserConfig,
    SceneRecordError,
    record_bytes,
    scene_record,
    sha256,
)

METHODS = ("nerf-qat", "nerfacto-qat")
"""The methods whose runs export to integers."""


def _folder_being_loaded() -> Optional[Path]:
    """The folder of the config.yml that nerfstudio's ``eval_setup`` is reading, from its ``config_path`` argument
    on the call stack: a loaded config has no other way to learn where it lies (nerfstudio 1.1.5 reads the YAML
    text and passes no path along), and every nerfstudio tool (ns-eval, ns-render, ns-viewer) loads through it."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "eval_setup" and "config_path" in frame.f_locals:
            return Path(frame.f_locals["config_path"]).resolve().parent
        frame = frame.f_back  # type: ignore[assignment]
    return None


@dataclass
class Int8ExportTrainerConfig(TrainerConfig):
    """Config of an integer export. Its base directory is the export folder itself, and when nerfstudio loads it the
    weights, the camera record and the checkpoint stub are found in the folder the config.yml lies in now, so an
    export can be copied or moved (see ``relocate``)."""

    def get_base_dir(self) -> Path:
        return Path(self.output_dir)

    def __setstate__(self, state: Dict[str, Any]) -> None:  # how PyYAML fills the object when config.yml is read
        self.__dict__.update(state)
        folder = _folder_being_loaded()
        if folder is not None:
            self.relocate(folder)

    def relocate(self, folder: Path) -> None:
        """Point the config at the files inside ``folder`` (the export folder)."""
        self.output_dir = folder
        model = self.pipeline.model
        model.int8_weights = folder / Path(model.int8_weights or WEIGHTS_FILE).name
        parser = self.pipeline.datamanager.dataparser
        if isinstance(parser, ExportSceneDataParserConfig):
            parser.record = folder / Path(parser.record).name
            parser.weights = model.int8_weights


@dataclass
class ExportInt8:
    """Export a trained nerf-qat run as integer weights that ns-eval, ns-render and ns-viewer can load."""

    load_config: Path
    """config.yml of the trained nerf-qat run."""
    output_dir: Path
    """Directory to create: model.safetensors, cameras.json, config.yml and nerfstudio_models/ (it can be moved)."""
    overwrite: bool = False
    """Replace output_dir if it already exists."""

    def main(self) -> None:
        try:
            self.run()
        except (Int8ExportError, SceneRecordError, FileNotFoundError, FileExistsError, ValueError) as err:
            CONSOLE.print(f"[bold red]ns-export-int8: {err}")
            sys.exit(1)

    def run(self) -> Path:
        from nerfstudio.utils.eval_utils import eval_setup

        if not self.load_config.is_file():
            raise FileNotFoundError(f"{self.load_config}: config file not found (pass the run's config.yml)")
        saved = yaml.load(self.load_config.read_text(), Loader=yaml.Loader)
        if not isinstance(saved, TrainerConfig) or saved.method_name not in METHODS:
            method = getattr(saved, "method_name", None)
            raise ValueError(
                f"{self.load_config}: a config of method {method!r}, not {' or '.join(METHODS)} (pass a run of one)"
            )
        if isinstance(saved, Int8ExportTrainerConfig):
            raise ValueError(f"{self.load_config}: this run is already an integer export")
        out = self.output_dir
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a directory (choose another --output-dir)")
        if out.exists() and any(out.iterdir()) and not self.overwrite:
            raise FileExistsError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
        if out.resolve() in self.load_config.resolve().parents:
            raise ValueError(f"{out}: holds the run being exported (choose another --output-dir)")

        config, pipeline, ckpt_path, step = eval_setup(self.load_config, test_mode="inference")
        model = pipeline.model
        if not isinstance(model, IntegerExport):
            raise ValueError(f"{self.load_config}: its model ({type(model).__name__}) has no integer export")
        refusal = model.export_refusal()
        if refusal:
            raise ValueError(f"{self.load_config}: {refusal}")
        quant = model.config.quant
        if not quant.enabled or step < quant.quant_start_step:
            CONSOLE.print(
                f"[yellow]warning: {self.load_config} never trained with fake quantization (enabled={quant.enabled}, "
                f"step {step} < quant_start_step {quant.quant_start_step}): this export is post-training quantization"
                " and will not match the run's own evaluation"
            )
        tensors = model.export_tensors()

        outputs = pipeline.datamanager.train_dataparser_outputs
        data = Path(config.pipeline.datamanager.data or config.pipeline.datamanager.dataparser.data)
        record = record_bytes(scene_record(self._splits(pipeline.datamanager), data))
        metadata = {
            **model.export_metadata(),
            "quant": dataclasses.asdict(quant),
            "dataparser": {
                "transform": outputs.dataparser_transform.tolist(),
                "scale": float(outputs.dataparser_scale),
            },
            "scene": json.loads(record)["metadata"],
            "scene_record_sha256": sha256(record),
            "step": int(step),
            "source_checkpoint_sha256": sha256(Path(ckpt_path).read_bytes()),
        }

        out_abs = out.resolve()
        out_abs.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_abs.name}.", dir=out_abs.parent))
        try:
            stored = write_file(staging / WEIGHTS_FILE, tensors, metadata)
            (staging / RECORD_FILE).write_bytes(record)
            (staging / "nerfstudio_models").mkdir()
            torch.save({"step": int(step), "pipeline": {}}, staging / "nerfstudio_models" / f"step-{step:09d}.ckpt")
            export_config = self._export_config(config, data)
            (staging / "config.yml").write_text(yaml.dump(export_config), "utf8")
            staging.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
            for name in (WEIGHTS_FILE, RECORD_FILE):
                (staging / name).chmod(0o644)
            if out_abs.exists():
                shutil.rmtree(out_abs)
            staging.rename(out_abs)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

        self._print_table(tensors, stored, model, out_abs)
        return out_abs

    @staticmethod
    def _splits(datamanager) -> Dict[str, Any]:
        """Dataparser outputs of every split the run's dataparser has (train, and val / test where present)."""
        outputs = {"train": datamanager.train_dataparser_outputs}
        for split in SPLITS[1:]:
            try:
                outputs[split] = datamanager.dataparser.get_dataparser_outputs(split=split)
            except (ValueError, FileNotFoundError, KeyError, AssertionError):
                continue  # a dataparser without this split
        return outputs

    @staticmethod
    def _export_config(config: TrainerConfig, data: Path) -> "Int8ExportTrainerConfig":
        """The run's config, pointed at the export: weights, cameras and checkpoint folder inside it (relative paths,
        set to the folder the config is loaded from), the scene's images where they were (for ns-eval)."""
        cfg = Int8ExportTrainerConfig(**{f.name: copy.deepcopy(getattr(config, f.name)) for f in fields(config)})
        cfg.pipeline.model.int8_weights = Path(WEIGHTS_FILE)
        cfg.pipeline.datamanager.data = None
        cfg.pipeline.datamanager.dataparser = ExportSceneDataParserConfig(
            data=data.resolve(), record=Path(RECORD_FILE), weights=Path(WEIGHTS_FILE)
        )
        cfg.output_dir = Path(".")
        cfg.relative_model_dir = Path("nerfstudio_models")
        cfg.load_dir = None
        cfg.load_checkpoint = None
        return cfg

    @staticmethod
    def _print_table(tensors: Dict[str, torch.Tensor], stored: Dict[str, int], model: IntegerExport, folder: Path):
        path = folder / WEIGHTS_FILE
        fp32 = model.fp32_bytes()
        described = model.export_descriptions()  # tensor -> (shape, bits) where the dtype does not tell
        table = Table(title=f"Integer export: {path}")
        for column in ("tensor", "shape", "dtype / bits", "bytes", "in the file (coded where smaller)"):
            table.add_column(column)
        for name, t in tensors.items():
            shape, kind = described.get(name, ("x".join(map(str, t.shape)), str(t.dtype).replace("torch.", "")))
            table.add_row(name, shape, kind, f"{t.numel() * t.element_size():,}", f"{stored[name]:,}")
        CONSOLE.print(table)
        size = path.stat().st_size
        raw = sum(t.numel() * t.element_size() for t in tensors.values())
        CONSOLE.print(
            f"{path.name}: {size:,} bytes ({size / 1e6:.3f} MB; tensors {raw:,} bytes raw, {sum(stored.values()):,} "
            f"coded) vs fp32 weights {fp32:,.0f} bytes ({fp32 / 1e6:.3f} MB): {fp32 / size:.2f}x smaller; "
            f"{RECORD_FILE} (cameras, no images): {(folder / RECORD_FILE).stat().st_size:,} bytes"
        )


def entrypoint() -> None:
    """Console script ``ns-export-int8``."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(ExportInt8).main()


if __name__ == "__main__":
    entrypoint()
