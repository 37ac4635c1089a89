"""Integer inference: the trained fake-quantized layers, converted to integer codes and integer matmuls.

``convert_to_int(module)`` swaps every ``QuantLinear`` for an ``IntLinear`` and every ``ActQuantizer`` for an
``IntActQuantizer`` in place, so the module's own wiring (its ``forward``) runs unchanged on integers.

Activations travel as ``IntTensor``: unsigned codes ``q`` in ``[0, 2**bits - 1]`` (uint8), or the same codes
shifted to int8 ``q - 128`` (what ``torch._int_mm`` takes), plus the scale and zero point. Three kernels:

- ``"onednn"``: oneDNN's int8 Linear (``torch.ops.onednn.qlinear_pointwise``, uint8 x int8 with prepacked
  weights) with bias, ReLU and requantization fused into the matmul. The fastest on x86 CPUs. It rounds its
  own way, so about one activation code in a million differs by one step from the fake-quantized model.
- ``"int"``: ``torch._int_mm`` (int8 x int8 -> int32), then, per input segment and in fp32,
  ``y = sum(acc * (x_scale * w_scale)) + bias`` and the same rounding function training used. The
  accumulator equals the product of codes the fake-quantized layer formed in fp32, so the outputs are
  bit-identical. ``compile=True`` fuses that epilogue with ``torch.compile`` (unfused it costs more than the
  integer matmul saves).
- ``"float"``: as ``"int"``, with the integer products formed in fp32 (exact below 2**24): any device.

``"auto"`` takes ``"onednn"`` on CPU (``"int"`` where PyTorch lacks it). Other devices always use ``"float"``:
``_int_mm`` on CUDA needs more than 16 rows and widths that are multiples of 8, which the 63-wide input and
the 1-wide density head are not.
"""

from __future__ import annotations

from typing import Dict, List, Literal, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from nerfqat_plugin.quant.compiled import call
from nerfqat_plugin.quant.fake_quant import round_codes, weight_codes, weight_scale
from nerfqat_plugin.quant.layers import ActQuantizer, QuantLinear
from nerfqat_plugin.quant.ops import affine, onednn_available

Kernel = Literal["auto", "onednn", "int", "float"]
_SHIFT = 128


class IntTensor(NamedTuple):
    """An activation: uint8 codes ``q`` (or int8 ``q - 128``), with its scale and zero point (0-d tensors)."""

    values: Tensor
    scale: Tensor
    zero_point: Tensor

    def codes(self) -> Tensor:
        """Unsigned codes ``q`` as uint8."""
        v = self.values
        return v if v.dtype == torch.uint8 else (v.to(torch.int16) + _SHIFT).to(torch.uint8)

    def shifted(self) -> Tensor:
        """``q - 128`` as int8."""
        v = self.values
        return v if v.dtype == torch.int8 else (v.to(torch.int16) - _SHIFT).to(torch.int8)

    def dequantize(self) -> Tensor:
        return (self.codes().float() - self.zero_point) * self.scale


def _to_shifted(codes: Tensor) -> Tensor:
    return (codes - _SHIFT).to(torch.int8)


def resolve_kernel(kernel: Kernel, device: torch.device) -> Kernel:
    """The kernel that runs on ``device``: off the CPU only ``float`` does (the others are CPU kernels here)."""
    if device.type != "cpu":
        return "float"
    if kernel == "auto" or (kernel == "onednn" and not onednn_available()):
        return "onednn" if onednn_available() else "int"
    return kernel


class IntActQuantizer(nn.Module):
    """Quantizes a float input (an encoding) to an ``IntTensor`` with frozen ``scale`` and ``zero_point``."""

    def __init__(
        self, scale: Tensor, zero_point: Tensor, qmax: int, kernel: Kernel = "auto", compile: bool = False
    ) -> None:
        super().__init__()
        self.qmax = qmax
        self.kernel: Kernel = kernel
        self.compile = compile
        self.register_buffer("scale", scale.detach().float().reshape(()).clone())
        self.register_buffer("zero_point", zero_point.detach().float().reshape(()).clone())

    def forward(self, x: Tensor) -> IntTensor:
        unsigned = resolve_kernel(self.kernel, x.device) == "onednn"
        values = call(_quantize, (x, self.scale, self.zero_point, self.qmax, unsigned), self.compile)
        return IntTensor(values, self.scale, self.zero_point)


def _quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmax: int, unsigned: bool) -> Tensor:
    """Float to codes with training's rounding: uint8 ``q`` (``unsigned``) or int8 ``q - 128``."""
    codes = round_codes(x, scale, zero_point, 0, qmax)
    return codes.to(torch.uint8) if unsigned else _to_shifted(codes)


def _int_linear(
    inputs: Sequence[Tuple[Tensor, Tensor, Tensor]],
    weights: Sequence[Tensor],
    row_sums: Sequence[Tensor],
    weight_scale: Tensor,
    bias: Tensor,
    out_scale: Optional[Tensor],
    out_zero_point: Optional[Tensor],
    qmax: int,
    relu: bool,
    fused: bool,
    kernel: Kernel,
) -> Tensor:
    """Integer Linear on ``(shifted, scale, zero_point)`` inputs; int8 output codes, or fp32 without ``out_scale``.

    ``weights[i]`` is the ``[in_i, out]`` int8 slice of the weight codes for input ``i``.
    """
    accs = []
    for (a, _, zero_point), w, rows in zip(inputs, weights, row_sums, strict=True):
        if kernel == "int":
            acc = torch._int_mm(a, w) + (_SHIFT - zero_point).to(torch.int32) * rows
            accs.append(acc.float())
        else:
            accs.append((a.float() + (_SHIFT - zero_point)) @ w.float())
    y, _, _ = affine(accs, [scale for _, scale, _ in inputs], weight_scale, bias)
    if out_scale is None or out_zero_point is None:
        return y
    if relu and fused:
        y = torch.relu(y)
    codes = round_codes(y, out_scale, out_zero_point, 0, qmax)
    if relu and not fused:
        codes = torch.maximum(codes, out_zero_point)
    return _to_shifted(codes)


class IntLinear(nn.Module):
    """Integer counterpart of ``QuantLinear``: int8 weight codes, per-channel scale, fp32 bias."""

    def __init__(
        self,
        weight_codes: Tensor,
        weight_scale: Tensor,
        bias: Tensor,
        in_splits: Sequence[int],
        relu: bool,
        fused: bool,
        out_qparams: Optional[Tuple[Tensor, Tensor]],
        qmax: int,
        kernel: Kernel = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.in_splits = tuple(in_splits)
        self.relu, self.fused, self.qmax = relu, fused, qmax
        self.kernel: Kernel = kernel
        self.compile = compile
        self.register_buffer("weight_codes", weight_codes.detach().to(torch.int8).clone())
        self.register_buffer("weight_scale", weight_scale.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())
        if out_qparams is None:
            self.out_scale = self.out_zero_point = None
        else:
            self.register_buffer("out_scale", out_qparams[0].detach().float().reshape(()).clone())
            self.register_buffer("out_zero_point", out_qparams[1].detach().float().reshape(()).clone())
        self._prepare()

    def _prepare(self) -> None:
        """Per-segment weight layouts for the kernels (derived from ``weight_codes``, not saved)."""
        segments = self.weight_codes.split(self.in_splits, dim=1)
        self._weights = [s.t().contiguous() for s in segments]
        self._row_sums = [s.to(torch.int32).sum(dim=1) for s in segments]
        self._packed = None  # oneDNN's prepacked weights, made on first use

    def _apply(self, fn, recurse=True):  # keep the derived tensors on the module's device
        super()._apply(fn, recurse)
        self._prepare()
        return self

    def forward(self, *inputs: IntTensor):
        kernel = resolve_kernel(self.kernel, self.weight_codes.device)
        lead = inputs[0].values.shape[:-1]
        flat = [IntTensor(x.values.reshape(-1, x.values.shape[-1]), x.scale, x.zero_point) for x in inputs]
        if kernel == "onednn":
            y = self._onednn(flat)
        else:
            args = (
                [(x.shifted(), x.scale, x.zero_point) for x in flat],
                self._weights,
                self._row_sums,
                self.weight_scale,
                self.bias,
                self.out_scale,
                self.out_zero_point,
                self.qmax,
                self.relu,
                self.fused,
                kernel,
            )
            y = call(_int_linear, args, self.compile)
        y = y.reshape(*lead, y.shape[-1])
        if self.out_scale is None:
            return y
        return IntTensor(y, self.out_scale, self.out_zero_point)

    def _onednn(self, inputs: List[IntTensor]) -> Tensor:
        """oneDNN int8 Linear; several inputs: all but the last to fp32, summed into the last one's epilogue."""
        ops = torch.ops.onednn
        if self._packed is None:
            segments = self.weight_codes.split(self.in_splits, dim=1)
            self._packed = [ops.qlinear_prepack(s.contiguous(), None) for s in segments]
            self._w_zero = torch.zeros(self.weight_codes.shape[0], dtype=torch.long)
        quantized = self.out_scale is not None
        out_scale = float(self.out_scale) if quantized else 1.0
        out_zp = int(self.out_zero_point) if quantized else 0
        out_dtype = torch.uint8 if quantized else torch.float32
        post_op = "relu" if self.relu and self.fused else "none"
        partial = None
        for x, packed in zip(inputs[:-1], self._packed[:-1], strict=True):
            y = ops.qlinear_pointwise(
                x.codes(), float(x.scale), int(x.zero_point), packed, self.weight_scale, self._w_zero,
                None, 1.0, 0, torch.float32, "none", [None], "",
            )  # fmt: skip
            partial = y if partial is None else partial + y
        x = inputs[-1]
        if partial is None:
            y = ops.qlinear_pointwise(
                x.codes(), float(x.scale), int(x.zero_point), self._packed[-1], self.weight_scale, self._w_zero,
                self.bias, out_scale, out_zp, out_dtype, post_op, [None], "",
            )  # fmt: skip
        else:
            # oneDNN sums only into an output of the same dtype: finish in fp32, then requantize here.
            y = ops.qlinear_pointwise.binary(
                x.codes(), float(x.scale), int(x.zero_point), self._packed[-1], self.weight_scale, self._w_zero,
                partial, self.bias, 1.0, 0, torch.float32, 1.0, 0, "sum", 1.0, post_op, [None], "",
            )  # fmt: skip
            if quantized:
                y = call(_quantize, (y, self.out_scale, self.out_zero_point, self.qmax, True), self.compile)
        if quantized and self.qmax < 255:
            y = y.clamp_max(self.qmax)
        if quantized and self.relu and not self.fused:
            y = y.clamp_min(out_zp)
        return y


def int_linear_from(layer: QuantLinear, kernel: Kernel = "auto", compile: bool = False) -> IntLinear:
    """The ``IntLinear`` that computes what ``layer`` computes with fake quantization on (frozen observers)."""
    tensors = layer_tensors(layer)
    return IntLinear(
        tensors["weight_codes"],
        tensors["weight_scale"],
        tensors["bias"],
        layer.in_splits,
        layer.relu,
        layer.fused,
        (tensors["out_scale"], tensors["out_zero_point"]) if layer.out_quant is not None else None,
        layer.out_quant.qmax if layer.out_quant is not None else 0,
        kernel,
        compile,
    )


@torch.no_grad()
def layer_tensors(layer: QuantLinear) -> Dict[str, Tensor]:
    """The integers and scales that define a trained ``QuantLinear``."""
    scale = weight_scale(layer.weight, layer.weight_qmax)
    out = {
        "weight_codes": weight_codes(layer.weight, scale, layer.weight_qmax).to(torch.int8),
        "weight_scale": scale,
        "bias": layer.bias.detach().float(),
    }
    if layer.out_quant is not None:
        out["out_scale"], out["out_zero_point"] = layer.out_quant.qparams()
    return out


def convert_to_int(module: nn.Module, kernel: Kernel = "auto", compile: bool = False) -> nn.Module:
    """Replace, in place, each ``QuantLinear``/``ActQuantizer`` inside ``module`` by its integer counterpart."""
    for name, child in list(module.named_children()):
        if isinstance(child, QuantLinear):
            setattr(module, name, int_linear_from(child, kernel, compile))
        elif isinstance(child, ActQuantizer):
            setattr(module, name, IntActQuantizer(*child.qparams(), child.qmax, kernel, compile))
        else:
            convert_to_int(child, kernel, compile)
    return module


def set_kernel(module: nn.Module, kernel: Kernel, compile: bool) -> None:
    """Choose the accumulator kernel and compilation for every ``IntLinear`` inside ``module``."""
    for m in module.modules():
        if isinstance(m, (IntLinear, IntActQuantizer)):
            m.kernel, m.compile = kernel, compile
