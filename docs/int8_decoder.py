"""Reference decoder of nerf-qat's integer export (docs/int8-format.md), in NumPy (and lzma / zstandard).

    python docs/int8_decoder.py exports/fern-int8/model.safetensors
    python docs/int8_decoder.py exports/fern-int8 --render test 0 fern-test-0.png

reads the file without any library but NumPy (the safetensors container is parsed by hand; coded tensors, format
version 2, are XZ streams, which Python's lzma decodes, or Zstandard frames, which the zstandard package decodes),
unpacks the weight codes and runs the coarse and fine networks with exactly the integer arithmetic the
specification gives, printing the density and colour of a few points; with ``--render``, renders a view of the
export folder's camera record (``cameras.json``) from the folder alone, as section 5 of the specification says, and
writes it as a PNG.
``Int8File(path).network("fine.").forward(positions, directions)`` and ``render_view(folder, split, index)`` are the
same as functions; every activation code is returned too, to check another implementation against, code by code.
"""

from __future__ import annotations

import argparse
import json
import struct
import zlib
from pathlib import Path
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


def decode_coded(tensors: Dict[str, np.ndarray], metadata: Dict[str, str]) -> None:
    """Replace each coded tensor (format version 2, section 1.1) by the bytes its stream holds: an XZ stream
    (Python's lzma) or a Zstandard frame (the zstandard package)."""
    for name, spec in json.loads(metadata.get("coding", "{}")).items():
        stream, nbytes = tensors[name].tobytes(), int(np.prod(spec["shape"]))
        if spec["codec"] == "xz":
            import lzma

            data = lzma.decompress(stream, format=lzma.FORMAT_XZ)
        elif spec["codec"] == "zstd":
            import zstandard  # a standard frame (RFC 8878): any Zstandard implementation decodes it

            data = zstandard.ZstdDecompressor().decompress(stream, max_output_size=nbytes)
        else:
            raise ValueError(f"{name}: unknown codec {spec['codec']!r}")
        if len(data) != nbytes:
            raise ValueError(f"{name}: decoded {len(data)} bytes, {nbytes} expected")
        tensors[name] = np.frombuffer(data, dtype=np.uint8).reshape(spec["shape"])


class Int8File:
    """A nerf-qat integer export file (format version 1 or 2)."""

    def __init__(self, path: str) -> None:
        self.tensors, self.metadata = read_safetensors(path)
        if self.metadata.get("format") != "nerfqat-int8" or self.metadata.get("format_version") not in ("1", "2"):
            raise ValueError(f"{path}: not a version 1 or 2 nerf-qat integer export")
        decode_coded(self.tensors, self.metadata)
        self.architecture = json.loads(self.metadata["architecture"])
        self.quant = json.loads(self.metadata["quant"])

    def network(self, prefix: str) -> Network:
        return Network(self.tensors, self.architecture, self.quant, prefix)


# --- rendering (section 5) -------------------------------------------------------------------------------------------


def linspace(start: float, end: float, steps: int) -> np.ndarray:
    """``steps`` float32 values from ``start`` to ``end`` as PyTorch's linspace forms them: step = (end - start) /
    (steps - 1); the first half start + i * step, the second half end - (steps - 1 - i) * step."""
    start32, end32 = F32(start), F32(end)
    step = F32((end32 - start32) / F32(steps - 1))
    i = np.arange(steps)
    low = (start32 + (step * i.astype(F32)).astype(F32)).astype(F32)
    high = (end32 - (step * (steps - 1 - i).astype(F32)).astype(F32)).astype(F32)
    return np.where(i < steps // 2, low, high).astype(F32)


def fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a * b + c`` rounded once to float32 (the float64 product of two float32 values is exact)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(F32)


def image_size(cameras: dict, index: int) -> Tuple[int, int]:
    """(height, width) of camera ``index`` of a split of the camera record."""
    return int(np.asarray(cameras["height"][index]).item()), int(np.asarray(cameras["width"][index]).item())


def camera_rays(cameras: dict, dtypes: dict, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origins, unit directions and the directions' length before normalising ([H*W, 3], [H*W, 3], [H*W, 1]) of
    camera ``index`` of a split of the camera record, pixel by pixel row-major through pixel centres."""
    dtype = {name: np.dtype(dtypes[name]) for name in ("fx", "fy", "cx", "cy")}
    # arrays of one value, not scalars: each operation then takes the wider of its operands' types, as in PyTorch
    fx, fy, cx, cy = (np.asarray(cameras[n][index], dtype=dtype[n]).reshape(1) for n in ("fx", "fy", "cx", "cy"))
    height, width = image_size(cameras, index)
    c2w = np.asarray(cameras["camera_to_worlds"][index], dtype=F32)
    y, x = np.meshgrid(np.arange(height, dtype=F32) + F32(0.5), np.arange(width, dtype=F32) + F32(0.5), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    u = ((x - cx) / fx).astype(F32)  # in the camera's own precision, then float32
    v = (-((y - cy) / fy)).astype(F32)
    d_cam = np.stack([u, v, np.full_like(u, -1.0)], axis=-1)
    products = (d_cam[:, None, :] * c2w[None, :, :3]).astype(F32)  # [N, 3 (world axis), 3 (camera axis)]
    d = ((products[..., 0] + products[..., 1]).astype(F32) + products[..., 2]).astype(F32)
    squares = (d[:, 0] * d[:, 0]).astype(F32)
    for axis in (1, 2):  # fused multiply-adds, as PyTorch's vector norm forms the sum of squares
        squares = fma(d[:, axis], d[:, axis], squares)
    norm = np.maximum(np.sqrt(squares)[:, None], F32(1e-8)).astype(F32)
    origins = np.broadcast_to(c2w[:, 3], d.shape).astype(F32)
    return origins, (d / norm).astype(F32), norm


def ndc_rays(origins: np.ndarray, directions: np.ndarray, p: dict) -> Tuple[np.ndarray, np.ndarray]:
    """World rays to NDC rays (section 5.2): origins on z_ndc = -1, directions reaching z_ndc = 1 at t = 1."""
    near = F32(p["near"])
    sx, sy = F32(2.0 * p["focal_x"] / p["width"]), F32(2.0 * p["focal_y"] / p["height"])
    dx, dy, dz = directions[:, 0], directions[:, 1], directions[:, 2]
    dz = np.where(np.abs(dz) < F32(1e-9), F32(-1e-9), dz).astype(F32)
    t0 = (-(near + origins[:, 2]) / dz).astype(F32)
    ox = (origins[:, 0] + (t0 * dx).astype(F32)).astype(F32)
    oy = (origins[:, 1] + (t0 * dy).astype(F32)).astype(F32)
    o = np.stack([((sx * ox).astype(F32) / near), ((sy * oy).astype(F32) / near), np.full_like(ox, -1.0)], axis=-1)
    tx = ((dx / dz).astype(F32) + (ox / near).astype(F32)).astype(F32)
    ty = ((dy / dz).astype(F32) + (oy / near).astype(F32)).astype(F32)
    d = np.stack([(-sx * tx).astype(F32), (-sy * ty).astype(F32), np.full_like(ox, 2.0)], axis=-1)
    return o.astype(F32), d.astype(F32)


def composite_weights(densities: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """w_i = (1 - exp(-sigma_i delta_i)) * exp(-sum_{j<i} sigma_j delta_j), per ray ([R, S])."""
    delta_density = (deltas * densities).astype(F32)
    alphas = (F32(1) - np.exp(-delta_density)).astype(F32)
    transmittance = np.concatenate([np.zeros_like(delta_density[:, :1]), np.cumsum(delta_density[:, :-1], axis=1)], 1)
    return np.nan_to_num((alphas * np.exp(-transmittance.astype(F32))).astype(F32))


def importance_bins(bins: np.ndarray, weights: np.ndarray, count: int, padding: float, original: bool) -> np.ndarray:
    """Section 5.4: ``count + 1`` bin edges (in the coarse spacing) drawn evenly from the coarse weights' histogram,
    merged with the coarse edges ``bins`` [R, S+1] when ``original``, sorted."""
    n = count + 1
    w = (weights + F32(padding)).astype(F32)
    total = w.sum(axis=1, keepdims=True, dtype=F32)
    pad = np.maximum(F32(1e-5) - total, F32(0)).astype(F32)
    w = (w + (pad / F32(w.shape[1])).astype(F32)).astype(F32)
    total = (total + pad).astype(F32)
    cdf = np.minimum(F32(1), np.cumsum((w / total).astype(F32), axis=1, dtype=F32))
    cdf = np.concatenate([np.zeros_like(cdf[:, :1]), cdf], axis=1)
    u = (linspace(0.0, 1.0 - 1.0 / n, n) + F32(1.0 / (2 * n))).astype(F32)
    last = bins.shape[1] - 1
    inds = np.stack([np.searchsorted(row, u, side="right") for row in cdf])
    below, above = np.clip(inds - 1, 0, last), np.clip(inds, 0, last)
    cdf0, cdf1 = np.take_along_axis(cdf, below, 1), np.take_along_axis(cdf, above, 1)
    bins0, bins1 = np.take_along_axis(bins, below, 1), np.take_along_axis(bins, above, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(np.nan_to_num(((u - cdf0) / (cdf1 - cdf0)).astype(F32), nan=0.0), 0, 1).astype(F32)
    drawn = (bins0 + (t * (bins1 - bins0)).astype(F32)).astype(F32)
    return np.sort(np.concatenate([bins, drawn], axis=1), axis=1) if original else drawn


class View(NamedTuple):
    rgb: np.ndarray  # [H, W, 3] in [0, 1]
    depth: np.ndarray  # [H, W, 1]: median depth, in the ray parameter t (NDC t for forward-facing scenes)
    accumulation: np.ndarray  # [H, W, 1]


def render_view(folder: str, split: str, index: int, chunk: int = 4096) -> View:
    """Camera ``index`` of ``split`` of an export folder's ``cameras.json``, rendered from the folder alone."""
    f = Int8File(str(Path(folder) / "model.safetensors"))
    if "render" not in f.metadata:
        raise ValueError(f"{folder}: this export has no render settings (made before they were recorded): re-export")
    settings = json.loads(f.metadata["render"])
    record = json.loads((Path(folder) / "cameras.json").read_text())
    cams = record["splits"][split]
    origins, directions, norm = camera_rays(cams["cameras"], cams["dtypes"], index)
    height, width = image_size(cams["cameras"], index)
    if settings.get("sampler", "hierarchical") == "occupancy":
        networks: Tuple[Optional[Network], Network] = (None, f.network("fine."))
        grid: Optional[Grid] = Grid(f.tensors["occupancy.bits"], settings["grid"])
    else:
        networks, grid = (f.network("coarse."), f.network("fine.")), None
    parts = [
        _render_rays(*networks, settings, origins[s : s + chunk], directions[s : s + chunk], norm[s : s + chunk], grid)
        for s in range(0, len(origins), chunk)
    ]
    rgb, depth, acc = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return View(rgb.reshape(height, width, 3), depth.reshape(height, width, 1), acc.reshape(height, width, 1))


class Grid:
    """The occupancy grid (section 5.8): a bitfield of r^3 cells over an axis-aligned box."""

    def __init__(self, packed: np.ndarray, info: dict) -> None:
        self.r = int(info["resolution"])
        self.lo, self.hi = (np.asarray(v, dtype=F32) for v in info["aabb"])
        raw = np.frombuffer(zlib.decompress(packed.tobytes()), dtype=np.uint8)
        self.bits = np.unpackbits(raw, count=self.r**3, bitorder="little").astype(bool)

    def occupied(self, positions: np.ndarray) -> np.ndarray:
        """Whether each point [..., 3] lies in an occupied cell (outside the box: no)."""
        ijk = np.floor(
            (((positions - self.lo).astype(F32) / (self.hi - self.lo).astype(F32)).astype(F32)) * F32(self.r)
        )
        inside = ((ijk >= 0) & (ijk < self.r)).all(axis=-1)
        ijk = np.where(inside[..., None], ijk, 0).astype(np.int64)
        return inside & self.bits[(ijk[..., 0] * self.r + ijk[..., 1]) * self.r + ijk[..., 2]]


def _render_rays(coarse: Optional[Network], fine: Network, settings: dict, origins, directions, norm, grid=None):
    """(rgb [R, 3], depth [R, 1], accumulation [R, 1]) of a batch of world rays (section 5)."""
    rays = settings["rays"]
    view_dirs = directions
    if rays["kind"] == "ndc":
        origins, directions = ndc_rays(origins, directions, rays)
        nears, fars = np.zeros_like(norm), np.ones_like(norm)
    elif rays["kind"] == "axis_depth":
        nears, fars = (F32(rays["near"]) * norm).astype(F32), (F32(rays["far"]) * norm).astype(F32)
    else:
        nears, fars = np.full_like(norm, rays["near"]), np.full_like(norm, rays["far"])
    if settings.get("coarse_spacing", settings.get("spacing")) == "disparity":
        s_near, s_far = (F32(1) / nears).astype(F32), (F32(1) / fars).astype(F32)

        def to_t(s):
            return (F32(1) / ((s * s_far).astype(F32) + ((F32(1) - s) * s_near).astype(F32))).astype(F32)
    else:

        def to_t(s):
            return ((s * fars).astype(F32) + ((F32(1) - s) * nears).astype(F32)).astype(F32)

    ndc = rays["kind"] == "ndc"
    if grid is not None:  # section 5.8: the evenly spaced bins, evaluated where occupied, until opaque
        n = settings["samples"]
        t = to_t(np.broadcast_to(linspace(0.0, 1.0, n + 1), (len(origins), n + 1)))
        march = (grid, float(settings["early_stop"]), int(settings["segment"]))
        weights, rgb, mids = _shade(fine, t, origins, directions, view_dirs, ndc, march)
    else:
        assert coarse is not None
        n = settings["coarse_samples"]
        bins = np.broadcast_to(linspace(0.0, 1.0, n + 1), (len(origins), n + 1))
        weights, _, _ = _shade(coarse, to_t(bins), origins, directions, view_dirs, ndc)
        fine_bins = importance_bins(
            bins, weights, settings["importance_samples"], settings["histogram_padding"], settings["include_original"]
        )
        weights, rgb, mids = _shade(fine, to_t(fine_bins), origins, directions, view_dirs, ndc)
    acc = weights.sum(axis=1, keepdims=True, dtype=F32)
    color = (weights[..., None] * np.nan_to_num(rgb)).sum(axis=1, dtype=F32)
    background = settings["background_color"]
    if background == "last_sample":
        color = (color + (np.nan_to_num(rgb)[:, -1] * (F32(1) - acc)).astype(F32)).astype(F32)
    elif background != "random":  # "random" renders as if on black
        value = {"white": 1.0, "black": 0.0}[background]
        color = (color + (F32(value) * (F32(1) - acc)).astype(F32)).astype(F32)
    cumulative = np.cumsum(weights, axis=1, dtype=F32)
    median = np.clip([np.searchsorted(row, F32(0.5), side="left") for row in cumulative], 0, mids.shape[1] - 1)
    depth = np.take_along_axis(mids, median[:, None], 1)
    return np.clip(color, 0, 1).astype(F32), depth.astype(F32), acc


def _shade(network: Network, t: np.ndarray, origins, directions, view_dirs, ndc: bool, march=None):
    """Weights [R, S], colours [R, S, 3] and sample parameters (interval midpoints) [R, S] of the intervals between
    consecutive ray parameters ``t`` [R, S+1]. With ``march`` = (grid, early_stop, segment), the network sees only
    the samples the occupancy sampler evaluates (section 5.8); the others have density 0."""
    starts, ends = t[:, :-1], t[:, 1:]
    sums = (starts + ends).astype(F32)
    positions = (origins[:, None, :] + ((directions[:, None, :] * sums[..., None]).astype(F32) / F32(2))).astype(F32)
    rays, samples = sums.shape
    deltas = (ends - starts).astype(F32)
    if ndc:  # NDC directions are not unit length
        length = np.sqrt((directions * directions).sum(axis=-1, keepdims=True, dtype=F32)).astype(F32)
    density, rgb = np.zeros((rays, samples), F32), np.zeros((rays, samples, 3), F32)
    keep = np.ones((rays, samples), bool) if march is None else march[0].occupied(positions)
    early_stop, segment = (0.0, samples) if march is None else march[1:]
    lengths = (deltas * length).astype(F32) if ndc else deltas
    optical, alive = np.zeros(rays, F32), np.ones(rays, bool)
    for start in range(0, samples, segment):
        cols = slice(start, min(start + segment, samples))
        mask = keep[:, cols] & alive[:, None]
        ray_index, column = np.nonzero(mask)
        if len(ray_index):
            out = network.forward(positions[:, cols][mask], view_dirs[ray_index])
            density[:, cols][mask], rgb[:, cols][mask] = out.density[:, 0], out.rgb
        if early_stop > 0:
            optical = (optical + (lengths[:, cols] * density[:, cols]).sum(axis=1, dtype=F32)).astype(F32)
            alive &= np.exp(-optical) >= F32(early_stop)
    if ndc:
        density = (density * length).astype(F32)
    weights = composite_weights(density, deltas)
    return weights, rgb, (sums / F32(2)).astype(F32)


def write_png(path: str, rgb: np.ndarray) -> None:
    """An 8-bit RGB PNG of an [H, W, 3] image in [0, 1] (zlib alone)."""
    pixels = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 2, 0, 0, 0)
    with open(path, "wb") as out:
        out.write(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
        )


def main(path: str) -> None:
    f = Int8File(path)
    print(f"{path}: architecture {f.architecture}, quantization {f.quant}, step {f.metadata.get('step')}")
    rng = np.random.default_rng(0)
    positions = rng.uniform(-1, 1, (4, 3)).astype(F32)
    directions = rng.normal(size=(4, 3)).astype(F32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    for prefix in [p for p in ("coarse.", "fine.") if f"{p}trunk.0.weight" in f.tensors]:
        out = f.network(prefix).forward(positions, directions)
        for p, sigma, rgb in zip(positions, out.density[:, 0], out.rgb, strict=True):
            print(f"{prefix:7s} x={np.round(p, 3)} density={sigma:.4f} rgb={np.round(rgb, 4)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="NumPy reference decoder of a nerf-qat integer export")
    parser.add_argument("path", help="model.safetensors (prints a few points), or the export folder with --render")
    parser.add_argument("--render", nargs=3, metavar=("SPLIT", "INDEX", "PNG"), help="render a view to a PNG")
    args = parser.parse_args()
    if args.render:
        folder = Path(args.path)
        folder = folder.parent if folder.is_file() else folder
        split, index, png = args.render
        view = render_view(str(folder), split, int(index))
        write_png(png, view.rgb)
        print(f"{png}: {split} view {index} of {folder}, {view.rgb.shape[1]}x{view.rgb.shape[0]}")
    else:
        main(args.path)
