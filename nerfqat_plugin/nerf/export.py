"""What a nerf-qat export holds beside the shared container (``int8_format``): its MLPs under the prefixes
``coarse.`` and ``fine.`` (the occupancy sampler has the fine one alone), each as ``int8_format.mlp_tensors``, and
with the occupancy sampler:
  ``occupancy.bits``       uint8, the occupancy grid's bitfield, zlib-compressed (``OccupancyGrid.packed``)
The ``architecture`` metadata (``ARCHITECTURE_FIELDS`` and the encoding) fixes the tensors; docs/int8-format.md
section 5 specifies them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from torch import Tensor, nn

from nerfqat_plugin.int8_format import Int8ExportError, check_quant, decode, load_mlp_tensors, read_file
from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.dispatch import Kernel
from nerfqat_plugin.quant.int8 import set_kernel

ARCHITECTURE_FIELDS = (
    "num_layers",
    "layer_width",
    "skip_layer",
    "view_width",
    "position_frequencies",
    "direction_frequencies",
)
"""Model config fields that fix the MLPs' tensors and inputs (recorded in the file with the encoding)."""
PREFIXES = ("coarse.", "fine.")
"""Tensor name prefixes of the coarse and fine MLPs (a model with the occupancy sampler has the fine one alone)."""
GRID_TENSOR = "occupancy.bits"
"""The occupancy grid's compressed bitfield (occupancy sampler only)."""


def architecture(model_config: Any, encoding: str) -> Dict[str, object]:
    """What fixes the MLPs' tensors and inputs: the ``ARCHITECTURE_FIELDS`` of a model config and the encoding
    implementation ('torch' or 'tcnn', whose features differ in order and scale)."""
    arch: Dict[str, object] = {name: int(getattr(model_config, name)) for name in ARCHITECTURE_FIELDS}
    arch["encoding"] = encoding
    return arch


def load_weights(
    path: Path, mlps: Dict[str, nn.Module], arch: Dict[str, object], quant: QuantConfig, kernel: Kernel, compile: bool
) -> Dict[str, Tensor]:
    """Make freshly built (fake-quantized) MLPs (by tensor-name prefix) integer ones holding the file's weights,
    after checking that the file was written for this architecture and quantization and holds exactly these MLPs;
    ``Int8ExportError`` naming the file otherwise. The file's tensors."""
    tensors, metadata = read_file(path)
    found = decode(metadata, "architecture")
    if found != arch:
        raise Int8ExportError(f"{path}: architecture {found} does not match the config's {arch}")
    file_quant = check_quant(metadata, quant, path)
    found_mlps = [p for p in PREFIXES if any(k.startswith(p) for k in tensors)]
    if found_mlps != list(mlps):
        raise Int8ExportError(
            f"{path}: holds the MLPs {[p[:-1] for p in found_mlps]}, the config's sampler uses {[p[:-1] for p in mlps]}"
        )
    for prefix, mlp in mlps.items():
        load_mlp_tensors(mlp, tensors, prefix, file_quant, path)
        set_kernel(mlp, kernel, compile)
    return tensors
