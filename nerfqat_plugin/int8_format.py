"""The integer export file: safetensors tensors plus string metadata, readable with ``safetensors`` alone.

docs/int8-format.md specifies the file and the computation it stands for; docs/int8_decoder.py runs it with NumPy
alone. This module is the container every method shares (the file, its metadata, its coding, and the tensors of a
quantized MLP); what a method stores beside them is its own export module's (``nerf.export``, ``nerfacto.export``).
In short, per MLP (nerf-qat: prefix ``coarse.`` or ``fine.``), for each Linear ``<name>``:
  ``<name>.weight``        uint8, packed weight codes: ``code + qmax`` in ``weight_bits`` bits (``quant.pack``)
  ``<name>.weight_scale``  bfloat16 [out], one scale per output channel (weight = code * scale)
  ``<name>.bias``          float32 [out]
and for each activation quantizer ``<name>`` (``<linear>.out_quant`` or an input quantizer):
  ``<name>.qparams``       float32 [2] = (scale, zero_point); value = (code - zero_point) * scale, code in
                           [0, 2**activation_bits - 1]
Metadata: ``format``, ``format_version``, ``architecture`` / ``quant`` / ``dataparser`` / ``scene`` / ``render`` (JSON;
``render``: the model's ``render_settings``, absent in exports made before it),
``scene_record_sha256`` (of the export's cameras.json), ``step`` and ``source_checkpoint_sha256``, and ``coding``.

Version 2 stores every uint8 tensor that codes smaller as an XZ stream or a Zstandard frame, whichever is smaller
(``coding``), its name and dtype unchanged and its shape the stream's length; ``coding`` (JSON) maps each coded
tensor to ``{"codec": "xz" or "zstd", "shape": [...]}``, the shape it decodes to. Version 1 files (no coding) keep
loading.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import Tensor, nn

from nerfqat_plugin import coding
from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.int8 import IntActQuantizer, IntLinear, convert_to_int, layer_tensors
from nerfqat_plugin.quant.layers import ActQuantizer, QuantLinear
from nerfqat_plugin.quant.pack import pack_bits, packed_nbytes, unpack_bits

FORMAT_NAME = "nerfqat-int8"
FORMAT_VERSION = 2
READABLE_VERSIONS = ("1", "2")
"""Versions this reader loads: 1 (no coded tensors) and 2."""
WEIGHTS_FILE = "model.safetensors"


class Int8ExportError(ValueError):
    """A problem with an integer export file; the message names the file and what is wrong."""


def check_quant(metadata: Dict[str, str], quant: QuantConfig, path: Path) -> QuantConfig:
    """The file's quantization spec, checked against the config's (bits and fusing); ``Int8ExportError`` if they
    differ."""
    spec = decode(metadata, "quant")
    if (spec.get("weight_bits"), spec.get("activation_bits"), spec.get("fused")) != (
        quant.weight_bits,
        quant.activation_bits,
        quant.fused,
    ):
        raise Int8ExportError(f"{path}: quantization {spec} does not match the config's")
    return QuantConfig(**spec)


def mlp_tensors(mlp: nn.Module, prefix: str, quant: QuantConfig) -> Dict[str, Tensor]:
    """The file's tensors for one trained (fake-quantized) MLP."""
    out: Dict[str, Tensor] = {}
    for name, m in mlp.named_modules():
        if isinstance(m, QuantLinear):
            t = layer_tensors(m)
            qmax = m.weight_qmax
            out[f"{prefix}{name}.weight"] = pack_bits(t["weight_codes"].to(torch.int64) + qmax, quant.weight_bits)
            out[f"{prefix}{name}.weight_scale"] = t["weight_scale"].to(torch.bfloat16)
            out[f"{prefix}{name}.bias"] = t["bias"].contiguous()
        elif isinstance(m, ActQuantizer):
            out[f"{prefix}{name}.qparams"] = torch.stack(m.qparams()).float()
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def load_mlp_tensors(mlp: nn.Module, tensors: Dict[str, Tensor], prefix: str, quant: QuantConfig, path: Path):
    """Turn a freshly built (fake-quantized) MLP into an integer one holding the file's tensors, in place."""
    expected = set(mlp_tensors(mlp, prefix, quant))
    present = {k for k in tensors if k.startswith(prefix)}
    if expected != present:
        missing, extra = sorted(expected - present), sorted(present - expected)
        raise Int8ExportError(
            f"{path}: architecture mismatch with the config (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    shapes = {name: tuple(m.weight.shape) for name, m in mlp.named_modules() if isinstance(m, QuantLinear)}
    bits, qmax = quant.weight_bits, quant.weight_qmax
    for name, (out_f, in_f) in shapes.items():  # check everything before changing the module
        _check_shape(tensors, f"{prefix}{name}.weight", (packed_nbytes(out_f * in_f, bits),), path)
        _check_shape(tensors, f"{prefix}{name}.weight_scale", (out_f,), path)
        _check_shape(tensors, f"{prefix}{name}.bias", (out_f,), path)
    for key in expected:
        if key.endswith(".qparams"):
            _check_shape(tensors, key, (2,), path)
    convert_to_int(mlp)
    for name, m in mlp.named_modules():
        if isinstance(m, IntLinear):
            out_f, in_f = shapes[name]
            codes = unpack_bits(tensors[f"{prefix}{name}.weight"], bits, out_f * in_f).reshape(out_f, in_f) - qmax
            m.weight_codes.copy_(codes.to(torch.int8))
            m.weight_scale.copy_(tensors[f"{prefix}{name}.weight_scale"].float())
            m.bias.copy_(tensors[f"{prefix}{name}.bias"])
            if m.out_scale is not None:
                scale, zero_point = tensors[f"{prefix}{name}.out_quant.qparams"]
                m.out_scale.copy_(scale)
                m.out_zero_point.copy_(zero_point)
            m._prepare()
        elif isinstance(m, IntActQuantizer):
            m.scale.copy_(tensors[f"{prefix}{name}.qparams"][0])
            m.zero_point.copy_(tensors[f"{prefix}{name}.qparams"][1])


def _check_shape(tensors: Dict[str, Tensor], key: str, shape: Tuple[int, ...], path: Path) -> None:
    if tuple(tensors[key].shape) != shape:
        raise Int8ExportError(
            f"{path}: architecture mismatch with the config: {key} has shape {tuple(tensors[key].shape)}, "
            f"expected {shape}"
        )


def write_file(path: Path, tensors: Dict[str, Tensor], metadata: Dict[str, Any], code: bool = True) -> Dict[str, int]:
    """Write tensors and metadata (values JSON-encoded unless already strings), each uint8 tensor coded where that
    is smaller (``code``: ``coding.encode``); atomic: temp file, then rename. The bytes each tensor takes in the
    file."""
    from safetensors.torch import save_file

    stored: Dict[str, Tensor] = {}
    coded: Dict[str, Dict[str, object]] = {}
    for name, t in tensors.items():
        stored[name] = t
        if code and t.dtype == torch.uint8 and t.numel():
            codec, stream = coding.encode(t.contiguous().numpy().tobytes())
            if len(stream) < t.numel():
                stored[name] = torch.frombuffer(bytearray(stream), dtype=torch.uint8)
                coded[name] = {"codec": codec, "shape": list(t.shape)}
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    meta.update({k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for k, v in metadata.items()})
    meta["coding"] = json.dumps(coded, separators=(",", ":"))
    tmp = path.with_name(path.name + ".tmp")
    save_file(stored, str(tmp), metadata=meta)
    tmp.replace(path)
    return {name: t.numel() * t.element_size() for name, t in stored.items()}


def read_file(path: Path) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """Tensors (coded ones decoded) and metadata of an export file, with its format checked; ``Int8ExportError`` on
    any problem."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise Int8ExportError(f"{path}: integer export file not found (run ns-export-int8 to create it)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise Int8ExportError(f"{path}: not a readable safetensors file, truncated or corrupt ({err})") from None
    if metadata.get("format") != FORMAT_NAME:
        raise Int8ExportError(f"{path}: not a nerf-qat integer export (format {metadata.get('format')!r})")
    if metadata.get("format_version") not in READABLE_VERSIONS:
        raise Int8ExportError(
            f"{path}: unknown format version {metadata.get('format_version')!r}; "
            f"this nerf-qat reads versions {', '.join(READABLE_VERSIONS)} (re-export with this version)"
        )
    if metadata["format_version"] != "1":
        _decode_tensors(path, tensors, metadata)
    return tensors, metadata


def _decode_tensors(path: Path, tensors: Dict[str, Tensor], metadata: Dict[str, str]) -> None:
    """Replace the coded tensors by what they decode to, in place (all checked before any is replaced)."""
    try:
        coded = json.loads(metadata.get("coding", ""))
        specs = {name: (str(c["codec"]), tuple(int(n) for n in c["shape"])) for name, c in coded.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise Int8ExportError(f"{path}: the 'coding' metadata is missing or malformed (re-export)") from None
    decoded: Dict[str, Tensor] = {}
    for name, (codec, shape) in specs.items():
        frame = tensors.get(name)
        if frame is None or frame.dtype != torch.uint8 or frame.dim() != 1:
            raise Int8ExportError(f"{path}: coded tensor {name!r} is missing or not a byte stream (re-export)")
        nbytes = math.prod(shape)
        try:
            data = coding.decode(codec, frame.numpy().tobytes(), nbytes)
        except coding.CodingError as err:
            raise Int8ExportError(f"{path}: tensor {name!r}: coded stream truncated or corrupt: {err}") from None
        decoded[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(shape)
    tensors.update(decoded)


def decode(metadata: Dict[str, str], key: str) -> Any:
    """A JSON metadata entry."""
    return json.loads(metadata[key])
