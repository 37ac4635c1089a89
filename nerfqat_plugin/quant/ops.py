"""The autograd nodes of fake-quantized training, written for few passes over memory.

- ``quantize``: float -> integer codes (divide, round, add the zero point, clamp, optionally a ReLU before or
  after). Its straight-through gradient ``1 / scale`` (zero where clipped) is recomputed from the input in the
  backward pass rather than stored as a mask.
- ``quant_linear``: ``y = sum_i (codes_i @ w_codes_i.T) * (s_i * s_w) + b`` from activation codes, the weight codes
  formed inside (never clipped: the scale covers the largest weight), optionally followed by the output
  quantizer (observer update, rounding) in the same node. Its backward folds the scales into the small weight
  matrix, so the large tensors see only the matmuls, one elementwise pass and the bias reduction.

Each elementwise step is a plain function that ``torch.compile`` fuses into one loop (``compile=False`` runs the
same function eagerly). The arithmetic is the one ``round_codes`` defines, so the codes are the ones export
stores and the integer kernels reproduce.

``fast`` computes in lower precision where that changes nothing or only the gradients: codes travel as bf16
(which holds 8-bit integers exactly), the codes product runs on int8 units (oneDNN, CPU) or with bf16 operands
and fp32 results (CUDA), exact either way, and the gradient products take bf16 operands, as under autocast.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from nerfqat_plugin.quant.compiled import call
from nerfqat_plugin.quant.fake_quant import weight_codes, weight_scale


def _codes(x: Tensor, scale: Tensor, zero_point: Tensor, qmax: int, relu_before: bool, relu_after: bool):
    """``(codes, q)``: ``q`` is the unclipped code (with zero point); ``codes`` the clipped code minus zero point."""
    v = torch.relu(x) if relu_before else x
    q = torch.round(v / scale) + zero_point
    codes = torch.clamp(q, 0, qmax) - zero_point
    return (torch.relu(codes) if relu_after else codes), q


def _codes_forward(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmax: int, relu_before: bool, relu_after: bool, dtype: torch.dtype
) -> Tensor:
    return _codes(x, scale, zero_point, qmax, relu_before, relu_after)[0].to(dtype)


def _codes_backward(
    grad: Tensor,
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmax: int,
    relu_before: bool,
    relu_after: bool,
    dtype: torch.dtype,
) -> Tensor:
    # The mask is recomputed from the input: storing a boolean mask in the forward costs more than this.
    codes, q = _codes(x, scale, zero_point, qmax, relu_before, relu_after)
    inside = (q >= 0) & (q <= qmax)
    if relu_before:
        inside = inside & (x > 0)
    if relu_after:
        inside = inside & (codes > 0)
    return torch.where(inside, grad.float() / scale, 0.0).to(dtype)


def _codes_dtype(fast: bool) -> torch.dtype:
    return torch.bfloat16 if fast else torch.float32


class _Quantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmax, relu_before, relu_after, compile, fast):  # type: ignore[override]
        args = (scale, zero_point, qmax, relu_before, relu_after)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x, scale, zero_point)
            ctx.args, ctx.compile = (*args[2:], x.dtype), compile
        return call(_codes_forward, (x, *args, _codes_dtype(fast)), compile)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, scale, zero_point = ctx.saved_tensors
        grad_x = call(_codes_backward, (grad, x, scale, zero_point, *ctx.args), ctx.compile)
        return grad_x, None, None, None, None, None, None, None


def quantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmax: int,
    relu_before: bool = False,
    relu_after: bool = False,
    compile: bool = False,
    fast: bool = False,
) -> Tensor:
    """Codes minus zero point of ``x`` (``relu_before``: of ``relu(x)``; ``relu_after``: codes clamped at zero).

    Straight-through gradient: ``1 / scale`` where the code was not clipped (and the ReLU passed), else zero.
    ``fast``: the codes come as bf16 (exact), else fp32.
    """
    return _Quantize.apply(x, scale, zero_point, qmax, relu_before, relu_after, compile, fast)


def affine(
    accs: Sequence[Tensor], scales: Sequence[Tensor], w_scale: Tensor, bias: Tensor, stats: Optional[str] = None
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """``y = sum_i acc_i * (s_i * w_scale) + bias``, and min/max of ``y`` (or of ``relu(y)``) for an observer.

    The one scaling of integer accumulators: training and the integer kernels both call it, so they round alike.
    """
    out = None
    for acc, s in zip(accs, scales, strict=True):
        part = acc * (s * w_scale)
        out = part if out is None else out + part
    y = out + bias  # type: ignore[operator]
    if stats is None:
        return y, None, None
    lo, hi = torch.aminmax(torch.relu(y) if stats == "relu" else y)
    return y, lo, hi


def _mm_fp32_out(a: Tensor, b: Tensor) -> Optional[Tensor]:
    """``a @ b`` with bf16 operands, accumulated and returned in fp32, where PyTorch has it (CUDA), else None."""
    if a.device.type != "cuda":
        return None
    try:
        return torch.mm(a.to(torch.bfloat16), b.to(torch.bfloat16), out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return None


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's int8 Linear."""
    return hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qlinear_pointwise")


def _to_uint8(codes: Tensor, zero_point: Tensor) -> Tensor:
    return (codes.float() + zero_point).to(torch.uint8)


def _codes_product(codes: Tensor, zero_point: Optional[Tensor], w_codes: Tensor, fast: bool, compile: bool) -> Tensor:
    """``codes @ w_codes.T``, exact in fp32 (integer sums below 2**24) on every path.

    ``fast``: on CPU, oneDNN's int8 Linear on ``codes + zero_point`` (uint8) and the weight codes (int8), unit
    scales, so it returns the integer accumulator itself; on CUDA, bf16 operands (which hold 8-bit codes exactly)
    with an fp32 result. Elsewhere, or without a zero point, an fp32 matmul.
    """
    if fast and codes.device.type == "cpu" and zero_point is not None and onednn_available():
        ops, out = torch.ops.onednn, w_codes.shape[0]
        packed = ops.qlinear_prepack(w_codes.to(torch.int8), None)
        return ops.qlinear_pointwise(
            call(_to_uint8, (codes, zero_point), compile), 1.0, int(zero_point), packed, torch.ones(out),
            torch.zeros(out, dtype=torch.long), None, 1.0, 0, torch.float32, "none", [None], "",
        )  # fmt: skip
    if fast:
        product = _mm_fp32_out(codes, w_codes.T)
        if product is not None:
            return product
    return codes.float() @ w_codes.T


def _grad_product(a: Tensor, b: Tensor, fast: bool) -> Tensor:
    """``a @ b`` for gradients: fp32, or (``fast``) bf16 operands (the result is bf16 on CPU, fp32 on CUDA)."""
    if not fast:
        return a @ b
    product = _mm_fp32_out(a, b)
    return product if product is not None else a.to(torch.bfloat16) @ b.to(torch.bfloat16)


class OutputQuant(NamedTuple):
    """What ``quant_linear`` needs of the output quantizer (an ``ActQuantizer``)."""

    quantizer: "torch.nn.Module"
    """Has ``qmax``, ``qparams()`` and ``observe_range(lo, hi)``."""
    observe: bool
    """Fold this batch's range into the observer before quantizing."""
    relu_before: bool
    """Fused Linear+ReLU: quantize ``relu(y)``."""
    relu_after: bool
    """Unfused: quantize ``y``, then clamp the codes at zero."""


class _QuantLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, bias, qmax, out_q, compile, fast, scales, zero_points, *codes):  # type: ignore[override]
        w_scale = weight_scale(weight, qmax)
        w_parts = weight_codes(weight, w_scale, qmax).split([c.shape[-1] for c in codes], dim=1)
        accs = [_codes_product(c, z, w, fast, compile) for c, z, w in zip(codes, zero_points, w_parts, strict=True)]
        stats = None if out_q is None or not out_q.observe else ("relu" if out_q.relu_before else "plain")
        y, lo, hi = call(affine, (accs, scales, w_scale, bias, stats), compile)
        ctx.num_inputs, ctx.fast, ctx.compile, ctx.out_args = len(codes), fast, compile, None
        if out_q is None:
            ctx.save_for_backward(w_scale, *w_parts, *scales, *codes)
            return y
        quantizer = out_q.quantizer
        if stats is not None:
            quantizer.observe_range(lo, hi)
        out_scale, out_zero_point = quantizer.qparams()
        ctx.out_args = (quantizer.qmax, out_q.relu_before, out_q.relu_after)
        ctx.save_for_backward(w_scale, *w_parts, *scales, *codes, y, out_scale, out_zero_point)
        out = call(_codes_forward, (y, out_scale, out_zero_point, *ctx.out_args, _codes_dtype(fast)), compile)
        ctx.mark_non_differentiable(out_scale, out_zero_point)
        return out, out_scale, out_zero_point

    @staticmethod
    def backward(ctx, grad, *_qparams):  # type: ignore[override]
        n, fast = ctx.num_inputs, ctx.fast
        w_scale, *rest = ctx.saved_tensors
        w_parts, scales, codes = rest[:n], rest[n : 2 * n], rest[2 * n : 3 * n]
        if ctx.out_args is not None:
            y, out_scale, out_zero_point = rest[3 * n :]
            args = (grad, y, out_scale, out_zero_point, *ctx.out_args, _codes_dtype(fast))
            grad = call(_codes_backward, args, ctx.compile)  # gradient w.r.t. y, already bf16 when fast
        grad_weight = grad_bias = None
        grad_codes = [None] * n
        if ctx.needs_input_grad[0]:
            parts = [_grad_product(grad.T, c, fast).float() * s for c, s in zip(codes, scales, strict=True)]
            grad_weight = torch.cat(parts, dim=1)
        if ctx.needs_input_grad[1]:
            grad_bias = grad.float().sum(0)
        for i in range(n):
            if ctx.needs_input_grad[8 + i]:
                grad_codes[i] = _grad_product(grad, w_parts[i] * (w_scale[:, None] * scales[i]), fast)
        return grad_weight, grad_bias, None, None, None, None, None, None, *grad_codes


def quant_linear(
    codes: Sequence[Tensor],
    scales: Sequence[Tensor],
    zero_points: Sequence[Optional[Tensor]],
    weight: Tensor,
    bias: Tensor,
    weight_qmax: int,
    out: Optional[OutputQuant] = None,
    compile: bool = False,
    fast: bool = False,
):
    """The fake-quantized Linear on 2-D activation codes (one input per weight segment).

    Without ``out``: the float output ``y``. With ``out``: ``(codes, scale, zero_point)`` of the quantized output;
    the observer reads min/max of ``y`` (or ``relu(y)``) in the pass that forms ``y``, then the codes use the
    updated range. Gradients reach the weight (straight through its codes), the bias and every input's codes;
    the scales are constants.
    """
    return _QuantLinear.apply(weight, bias, weight_qmax, out, compile, fast, tuple(scales), tuple(zero_points), *codes)
