"""Reference decoder of nerf-qat's integer export (docs/int8-format.md), in NumPy alone.

    python docs/int8_decoder.py exports/fern-int8/model.safetensors

reads the file without any library but NumPy (the safetensors container is parsed by hand), unpacks the weight
codes and runs the coarse and fine networks with exactly the integer arithmetic the specification gives, printing
the density and colour of a few points. ``Int8File(path).network("fine.").forward(positions, directions)`` is the
same as a function; every activation code is returned too, to check another implementation against, code by code.
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

F32 = np.float32
DTYPES = {"U8": np.uint8, "I8": np.int8, "F32": np.float32, "BF16": np.uint16, "I32": np.int32, "I64": np.int64}


def read_safetensors(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """All tensors (bf16 as float32) and the string metadata of a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    metadata = header.pop("__metadata__", {})
    buffer = blob[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        array = np.frombuffer(buffer[begin:end], dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
        if info["dtype"] == "BF16":  # the upper 16 bits of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array.reshape(info["shape"])
    return tensors, metadata


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """``count`` unsigned values of ``bits`` bits from a stream packed least significant bit first."""
    stream = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits).astype(np.int64)
    return (stream << np.arange(bits)).sum(axis=1)


def encode(x: np.ndarray, num_frequencies: int) -> np.ndarray:
    """Positional encoding of coordinates ``x`` [N, 3]: with v = x / 2 (float32), for each axis a and k < F the
    features sin(2 pi 2^k v_a), then the same with cos (computed as sin(t + pi/2)), then v itself."""
    v = (x.astype(F32) * F32(0.5)).astype(F32)
    t = (v * F32(2 * np.pi)).astype(F32)
    freqs = (F32(2.0) ** np.arange(num_frequencies, dtype=F32)).astype(F32)
    t = (t[:, :, None] * freqs).reshape(len(x), -1).astype(F32)  # axis-major: a0 k0..kF-1, a1 ..., a2 ...
    return np.concatenate([np.sin(t), np.sin((t + F32(np.pi / 2)).astype(F32)), v], axis=1).astype(F32)


class Codes(NamedTuple):
    """An activation: unsigned codes with their scale and zero point."""

    codes: np.ndarray
    scale: np.float32
    zero_point: np.float32


def quantize(y: np.ndarray, scale: np.float32, zero_point: np.float32, qmax: int, relu: Optional[str]) -> np.ndarray:
    """clamp(round_half_even(v * r + zero_point), 0, qmax) with r = float32(1 / scale), v = relu(y) when fused;
    unfused: then at least the zero point (the ReLU on codes)."""
    v = np.maximum(y, F32(0)) if relu == "fused" else y
    r = (F32(1) / scale).astype(F32)
    q = np.clip(np.rint(((v * r).astype(F32) + zero_point).astype(F32)), 0, qmax).astype(F32)
    return np.maximum(q, zero_point) if relu == "unfused" else q


class Linear(NamedTuple):
    codes: np.ndarray  # int64 [out, in], symmetric, zero point 0
    scale: np.ndarray  # float32 [out]
    bias: np.ndarray  # float32 [out]
    out: Optional[Tuple[np.float32, np.float32]]  # (scale, zero point) of the output quantizer, or float output

    def __call__(self, inputs: List[Codes]) -> np.ndarray:
        """Float output y = (part_n + bias) + (part_1 + ... + part_n-1), part_i = acc_i * (s_i * w_scale),
        acc_i = (codes_i - zp_i) @ w_i^T exactly."""
        parts = []
        start = 0
        for x in inputs:
            width = x.codes.shape[1]
            acc = (x.codes.astype(np.int64) - np.int64(x.zero_point)) @ self.codes[:, start : start + width].T
            parts.append((acc.astype(F32) * (x.scale * self.scale).astype(F32)).astype(F32))
            start += width
        y = (parts[-1] + self.bias).astype(F32)
        if len(parts) == 1:
            return y
        rest = parts[0]
        for part in parts[1:-1]:
            rest = (rest + part).astype(F32)
        return (y + rest).astype(F32)


class Outputs(NamedTuple):
    raw_density: np.ndarray  # [N, 1] before the ReLU
    density: np.ndarray  # [N, 1]
    rgb: np.ndarray  # [N, 3]
    codes: Dict[str, np.ndarray]  # unsigned codes of every activation quantizer, by tensor name prefix


class Network:
    """One NeRF MLP of the file (prefix ``coarse.`` or ``fine.``)."""

    def __init__(self, tensors: Dict[str, np.ndarray], arch: dict, quant: dict, prefix: str) -> None:
        self.arch, self.prefix = arch, prefix
        self.qmax = 2 ** quant["activation_bits"] - 1
        self.relu = "fused" if quant["fused"] else "unfused"
        bits, wmax = quant["weight_bits"], 2 ** (quant["weight_bits"] - 1) - 1
        self.linears: Dict[str, Linear] = {}
        self.inputs: Dict[str, Tuple[np.float32, np.float32]] = {}
        for name in tensors:
            if name.startswith(prefix) and name.endswith(".qparams") and ".out_quant." not in name:
                scale, zero_point = tensors[name]
                self.inputs[name[len(prefix) : -len(".qparams")]] = (F32(scale), F32(zero_point))
            if name.startswith(prefix) and name.endswith(".weight_scale"):
                layer = name[len(prefix) : -len(".weight_scale")]
                out_features = tensors[name].shape[0]
                bias = tensors[f"{prefix}{layer}.bias"]
                packed = tensors[f"{prefix}{layer}.weight"]
                in_features = sum(self.input_widths(layer))
                codes = unpack_codes(packed, bits, out_features * in_features).reshape(out_features, in_features)
                q = tensors.get(f"{prefix}{layer}.out_quant.qparams")
                out = None if q is None else (F32(q[0]), F32(q[1]))
                self.linears[layer] = Linear(codes - wmax, tensors[name].astype(F32), bias.astype(F32), out)

    def input_widths(self, layer: str) -> List[int]:
        """Widths of the inputs of a Linear, in order (its weight's columns are their concatenation)."""
        a = self.arch
        position = 3 + 3 * 2 * a["position_frequencies"]
        direction = 3 + 3 * 2 * a["direction_frequencies"]
        width = a["layer_width"]
        if layer == "trunk.0":
            return [position]
        if layer == f"trunk.{a['skip_layer']}":
            return [width, position]
        return {"view": [width, direction], "rgb_head": [a["view_width"]]}.get(layer, [width])

    def _layer(self, name: str, inputs: List[Codes], relu: Optional[str], codes: Dict[str, np.ndarray]):
        layer = self.linears[name]
        y = layer(inputs)
        if layer.out is None:
            return y
        scale, zero_point = layer.out
        q = quantize(y, scale, zero_point, self.qmax, relu)
        codes[f"{name}.out_quant"] = q
        return Codes(q, scale, zero_point)

    def forward_encoded(self, position_enc: np.ndarray, direction_enc: np.ndarray) -> Outputs:
        """The network on encoded positions [N, P] and view directions [N, D] (float32)."""
        codes: Dict[str, np.ndarray] = {}

        def quantize_input(name: str, x: np.ndarray) -> Codes:
            scale, zero_point = self.inputs[name]
            codes[name] = quantize(x.astype(F32), scale, zero_point, self.qmax, None)
            return Codes(codes[name], scale, zero_point)

        x = quantize_input("position_quant", position_enc)
        h = x
        for i in range(self.arch["num_layers"]):
            inputs = [h, x] if i == self.arch["skip_layer"] and i > 0 else [h]
            h = self._layer(f"trunk.{i}", inputs, self.relu, codes)
        raw = self._layer("density_head", [h], None, codes)
        feature = self._layer("feature", [h], None, codes)
        d = quantize_input("direction_quant", direction_enc)
        view = self._layer("view", [feature, d], self.relu, codes)
        logits = self._layer("rgb_head", [view], None, codes)
        rgb = (F32(1) / (F32(1) + np.exp(-logits))).astype(F32)
        return Outputs(raw, np.maximum(raw, F32(0)), rgb, codes)

    def forward(self, positions: np.ndarray, directions: np.ndarray) -> Outputs:
        """The network on positions [N, 3] (the space rays are sampled in: NDC for forward-facing scenes) and unit
        world viewing directions [N, 3]."""
        if self.arch["encoding"] != "torch":
            raise ValueError(f"encoding {self.arch['encoding']!r}: this decoder implements the 'torch' encoding")
        pos = encode(positions, self.arch["position_frequencies"])
        return self.forward_encoded(pos, encode(directions, self.arch["direction_frequencies"]))


class Int8File:
    """A nerf-qat integer export file."""

    def __init__(self, path: str) -> None:
        self.tensors, self.metadata = read_safetensors(path)
        if self.metadata.get("format") != "nerfqat-int8" or self.metadata.get("format_version") != "1":
            raise ValueError(f"{path}: not a version 1 nerf-qat integer export")
        self.architecture = json.loads(self.metadata["architecture"])
        self.quant = json.loads(self.metadata["quant"])

    def network(self, prefix: str) -> Network:
        return Network(self.tensors, self.architecture, self.quant, prefix)


def main(path: str) -> None:
    f = Int8File(path)
    print(f"{path}: architecture {f.architecture}, quantization {f.quant}, step {f.metadata.get('step')}")
    rng = np.random.default_rng(0)
    positions = rng.uniform(-1, 1, (4, 3)).astype(F32)
    directions = rng.normal(size=(4, 3)).astype(F32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    for prefix in ("coarse.", "fine."):
        out = f.network(prefix).forward(positions, directions)
        for p, sigma, rgb in zip(positions, out.density[:, 0], out.rgb, strict=True):
            print(f"{prefix:7s} x={np.round(p, 3)} density={sigma:.4f} rgb={np.round(rgb, 4)}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/int8_decoder.py path/to/model.safetensors")
    main(sys.argv[1])
