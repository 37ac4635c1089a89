"""Integer inference: the trained fake-quantized layers, converted to integer codes and integer matmuls.

``convert_to_int(module)`` swaps every ``QuantLinear`` for an ``IntLinear`` and every ``ActQuantizer`` for an
``IntActQuantizer`` in place, so the module's own wiring (its ``forward``) runs unchanged on integers.

Activations travel as ``IntTensor``: int8 values ``a = q - 128`` where ``q`` in ``[0, 2**bits - 1]`` is the
unsigned activation code, plus the scale and zero point. A Linear computes, per input segment,

    acc = int_mm(a, w_codes.T) + (128 - zero_point) * row_sum(w_codes)      (exact int32)
    y   = sum_segments(acc * (x_scale * w_scale)) + bias                   (fp32, same ops as training)

and requantizes ``y`` with the same rounding function that training used. The accumulator equals the
product of codes that the fake-quantized layer formed in fp32, so both give bit-identical outputs.

Two kernels compute ``acc``: ``"int"`` (``torch._int_mm``, int8 x int8 -> int32) and ``"float"`` (the same
integers as fp32 values, exact below 2**24). ``"auto"`` takes ``"int"`` on CPU and ``"float"`` elsewhere
(``_int_mm`` on CUDA needs more than 16 rows and widths that are multiples of 8, which the 63-wide input
and 1-wide density head are not).
``compile=True`` runs each layer through ``torch.compile``, which fuses the epilogue (scale, bias, ReLU,
rounding) into one pass: without it the elementwise work costs more than the integer matmul saves.
"""

from __future__ import annotations

import warnings
from typing import Dict, Literal, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from nerfqat_plugin.quant.fake_quant import round_codes
from nerfqat_plugin.quant.layers import ActQuantizer, QuantLinear

Kernel = Literal["auto", "int", "float"]
_SHIFT = 128


class IntTensor(NamedTuple):
    """An activation as int8 ``q - 128``, with its scale and zero point (0-d float tensors)."""

    shifted: Tensor
    scale: Tensor
    zero_point: Tensor

    def dequantize(self) -> Tensor:
        return (self.shifted.float() + _SHIFT - self.zero_point) * self.scale


def _to_shifted(codes: Tensor) -> Tensor:
    return (codes - _SHIFT).to(torch.int8)


class IntActQuantizer(nn.Module):
    """Quantizes a float input (an encoding) to an ``IntTensor`` with frozen ``scale`` and ``zero_point``."""

    def __init__(self, scale: Tensor, zero_point: Tensor, qmax: int) -> None:
        super().__init__()
        self.qmax = qmax
        self.register_buffer("scale", scale.detach().float().reshape(()).clone())
        self.register_buffer("zero_point", zero_point.detach().float().reshape(()).clone())

    def forward(self, x: Tensor) -> IntTensor:
        codes = round_codes(x, self.scale, self.zero_point, 0, self.qmax)
        return IntTensor(_to_shifted(codes), self.scale, self.zero_point)


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
    out = None
    for (a, scale, zero_point), w, rows in zip(inputs, weights, row_sums, strict=True):
        if kernel == "int":
            acc = torch._int_mm(a, w) + (_SHIFT - zero_point).to(torch.int32) * rows
            acc = acc.float()
        else:
            acc = (a.float() + (_SHIFT - zero_point)) @ w.float()
        part = acc * (scale * weight_scale)
        out = part if out is None else out + part
    y = out + bias  # type: ignore[operator]
    if out_scale is None or out_zero_point is None:
        return y
    if relu and fused:
        y = torch.relu(y)
    codes = round_codes(y, out_scale, out_zero_point, 0, qmax)
    if relu and not fused:
        codes = torch.maximum(codes, out_zero_point)
    return _to_shifted(codes)


_compiled_int_linear = None
_compile_failed = False


def _run_compiled(args):
    """``_int_linear`` through ``torch.compile``; falls back to eager (once said) if compilation fails."""
    global _compiled_int_linear, _compile_failed
    if _compile_failed:
        return _int_linear(*args)
    if _compiled_int_linear is None:
        # One graph per layer signature (inputs, ReLU, fused, kernel, widths of 1): more than dynamo's default 8.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled_int_linear = torch.compile(_int_linear, dynamic=True)
    try:
        return _compiled_int_linear(*args)
    except Exception as err:  # a missing C++ compiler or an unsupported backend must not stop rendering
        _compile_failed = True
        warnings.warn(f"torch.compile of the integer layers failed, running them eagerly (slower): {err}", stacklevel=2)
        return _int_linear(*args)


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
        """Per-segment transposed weights and row sums, laid out for ``_int_mm`` (derived, not saved)."""
        segments = self.weight_codes.split(self.in_splits, dim=1)
        self._weights = [s.t().contiguous() for s in segments]
        self._row_sums = [s.to(torch.int32).sum(dim=1) for s in segments]

    def _apply(self, fn, recurse=True):  # keep the derived tensors on the module's device
        super()._apply(fn, recurse)
        self._prepare()
        return self

    def forward(self, *inputs: IntTensor):
        kernel = self.kernel
        if kernel == "auto":
            kernel = "int" if self.weight_codes.device.type == "cpu" else "float"
        lead = inputs[0].shifted.shape[:-1]
        args = (
            [(x.shifted.reshape(-1, x.shifted.shape[-1]), x.scale, x.zero_point) for x in inputs],
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
        y = _run_compiled(args) if self.compile else _int_linear(*args)
        y = y.reshape(*lead, y.shape[-1])
        if self.out_scale is None:
            return y
        return IntTensor(y, self.out_scale, self.out_zero_point)


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
    from nerfqat_plugin.quant.fake_quant import weight_codes, weight_scale

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
            setattr(module, name, IntActQuantizer(*child.qparams(), child.qmax))
        else:
            convert_to_int(child, kernel, compile)
    return module


def set_kernel(module: nn.Module, kernel: Kernel, compile: bool) -> None:
    """Choose the accumulator kernel and compilation for every ``IntLinear`` inside ``module``."""
    for m in module.modules():
        if isinstance(m, IntLinear):
            m.kernel, m.compile = kernel, compile
