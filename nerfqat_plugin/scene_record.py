"""The scene an export renders, without its images: cameras of every split, the dataparser's transform, scale, scene
box and metadata (near/far, NDC), in ``cameras.json`` beside the weights; and the dataparser that reads it back.

An export then views and renders with no dataset on disk. Ground truth stays where it was: the record names the
images (relative to the scene folder ``data``), which only ns-eval reads.

Only imports nerfstudio's camera and dataparser modules (a config class of a saved export is imported while
nerfstudio discovers plugins, when importing datamanagers or pipelines would be circular).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox

RECORD_FILE = "cameras.json"
RECORD_FORMAT = "nerfqat-scene"
RECORD_VERSION = 1
SPLITS = ("train", "val", "test")
_CAMERA_FIELDS = ("camera_to_worlds", "fx", "fy", "cx", "cy", "width", "height", "camera_type")


class SceneRecordError(ValueError):
    """A camera record that is missing, unreadable or does not belong to its weights; the message names the file."""


def _tolist(value: Any) -> Any:
    """Dataparser metadata as JSON values (tensors become lists)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _tolist(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tolist(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def _relative(path: Path, data: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(data.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def scene_record(outputs: Dict[str, DataparserOutputs], data: Path) -> Dict[str, Any]:
    """The record of a scene from the dataparser outputs of its splits (``train`` first), images named relative to
    the scene folder ``data``."""
    train = outputs["train"]
    splits = {}
    for split, out in outputs.items():
        if out.cameras.distortion_params is not None and bool(out.cameras.distortion_params.abs().sum() > 0):
            raise SceneRecordError(f"{split} cameras have lens distortion, which the camera record does not hold")
        cams = {name: getattr(out.cameras, name).tolist() for name in _CAMERA_FIELDS}
        # the dtypes too: a dataparser may hand over float64 focal lengths, which float32 would round
        dtypes = {name: str(getattr(out.cameras, name).dtype).replace("torch.", "") for name in _CAMERA_FIELDS}
        images = [_relative(p, data) for p in out.image_filenames]
        splits[split] = {"images": images, "cameras": cams, "dtypes": dtypes}
    return {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "data": str(Path(data).resolve()),
        "dataparser_transform": train.dataparser_transform.tolist(),
        "dataparser_scale": float(train.dataparser_scale),
        "scene_box": train.scene_box.aabb.tolist(),
        "alpha_color": None if train.alpha_color is None else train.alpha_color.tolist(),
        "metadata": _tolist(dict(train.metadata)),
        "splits": splits,
    }


def record_bytes(record: Dict[str, Any]) -> bytes:
    """The file contents of a record (what its checksum covers)."""
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def exported_sha256(weights: Path) -> Optional[str]:
    """The checksum of the camera record a weights file was exported with (None: no such file, or an export from
    before camera records)."""
    if not weights.is_file():
        return None  # the model reports a missing weights file itself
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return (f.metadata() or {}).get("scene_record_sha256")
    except (SafetensorError, OSError):
        return None  # an unreadable weights file is reported when the model reads it


def read_record(path: Path, expected_sha256: Optional[str] = None) -> Dict[str, Any]:
    """A record, checked: readable, of this format and version, and (with ``expected_sha256``) the one its weights
    were exported with."""
    if not path.is_file():
        raise SceneRecordError(f"{path}: camera record not found (it is written by ns-export-int8 beside the weights)")
    raw = path.read_bytes()
    try:
        record = json.loads(raw)
    except ValueError as err:
        raise SceneRecordError(f"{path}: not a readable camera record ({err})") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise SceneRecordError(f"{path}: not a nerf-qat camera record")
    if record.get("version") != RECORD_VERSION:
        raise SceneRecordError(f"{path}: camera record version {record.get('version')!r}, this nerf-qat reads 1")
    if expected_sha256 is not None and sha256(raw) != expected_sha256:
        raise SceneRecordError(
            f"{path}: this camera record is not the one the weights were exported with (checksum differs): "
            "re-export, or put back the export's own cameras.json"
        )
    return record


@dataclass
class ExportSceneDataParserConfig(DataParserConfig):
    """The cameras and scene of an integer export (``cameras.json``), with the scene folder its images are in."""

    _target: Type = field(default_factory=lambda: ExportScene)
    """Class this config builds."""
    data: Path = Path(".")
    """Scene folder the ground-truth images are read from (only ns-eval reads them; edit it if the scene moved)."""
    record: Path = Path(RECORD_FILE)
    """The camera record (set to the export folder's cameras.json when the export is loaded)."""
    weights: Path = Path("model.safetensors")
    """The weights file beside it, whose metadata holds the record's checksum (set when the export is loaded)."""


@dataclass
class ExportScene(DataParser):
    """Cameras and scene of a split from an export's camera record; image files may be absent."""

    config: ExportSceneDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        record = read_record(Path(self.config.record), exported_sha256(Path(self.config.weights)))
        splits = record["splits"]
        if split not in splits:
            raise SceneRecordError(f"{self.config.record}: no {split!r} split (has {sorted(splits)})")
        entry = splits[split]
        cams: Dict[str, List[Any]] = entry["cameras"]
        cameras = Cameras(
            **{name: torch.tensor(cams[name], dtype=getattr(torch, entry["dtypes"][name])) for name in _CAMERA_FIELDS}
        )
        data = Path(self.config.data)
        alpha = record.get("alpha_color")
        return DataparserOutputs(
            image_filenames=[data / name for name in entry["images"]],
            cameras=cameras,
            alpha_color=None if alpha is None else torch.tensor(alpha, dtype=torch.float32),
            scene_box=SceneBox(aabb=torch.tensor(record["scene_box"], dtype=torch.float32)),
            metadata={**record["metadata"], "images_optional": True},
            dataparser_transform=torch.tensor(record["dataparser_transform"], dtype=torch.float32),
            dataparser_scale=float(record["dataparser_scale"]),
        )
