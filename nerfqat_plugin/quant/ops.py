"""The autograd nodes of fake-quantized training, written for few passes over memory.

- ``quantize``: float -> centered codes (``rounding.activation_codes`` minus the zero point). Its straight-through
  gradient ``1 / scale`` (where ``rounding.gradient_mask`` passes) is recomputed from the input in the backward pass
  rather than stored as a mask.
- ``linear``: ``y = sum_i (centered_i @ w_codes_i.T) * (s_i * s_w) + b`` from the centered codes of one or more
  inputs, the weight codes formed inside (never clipped: the scale covers the largest weight), and, on request, the
  min/max of ``y`` (or of ``relu(y)``) for an observer, in the same pass. Its backward folds the scales into the
  small weight matrix, so the large tensors see only the matmuls, one elementwise pass and the bias reduction.

The nodes are pure: they read their options from one immutable object and change no module state (observers are
updated by the layers, from the range ``linear`` returns). Each elementwise step is a plain function that
``torch.compile`` fuses into one loop (``compile=False`` runs the same function eagerly); the arithmetic is
``rounding``'s, so the codes are the ones export stores and the integer kernels reproduce. How the products are
formed (``dispatch.TrainPath``) changes no code: every product of codes is exact.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from nerfqat_plugin.quant.compiled import call
from nerfqat_plugin.quant.dispatch import FP32, TrainPath
from nerfqat_plugin.quant.kernels import codes_product, grad_product
from nerfqat_plugin.quant.rounding import ReLU, activation_codes, gradient_mask, rescale, weight_codes, weight_scale


class QuantizeOptions(NamedTuple):
    """Options of one ``quantize`` call."""

    qmax: int
    """Largest code."""
    relu: ReLU = None
    """ReLU mode applied with the rounding (``rounding.ReLU``)."""
    dtype: torch.dtype = torch.float32
    """Type the centered codes are returned in (bf16 holds them exactly)."""
    compile: bool = False
    """Run the elementwise steps through ``torch.compile``."""


class LinearOptions(NamedTuple):
    """Options of one ``linear`` call."""

    weight_qmax: int
    """Weight codes lie in ``[-weight_qmax, weight_qmax]``."""
    path: TrainPath = FP32
    """How the products are formed (all exact for the codes)."""
    compile: bool = False
    """Run the elementwise steps through ``torch.compile``."""
    observe: bool = False
    """Also return min and max of the output for an observer."""
    relu: ReLU = None
    """With ``observe``: "fused" reads the range of ``relu(y)`` (what a fused block quantizes), else of ``y``."""


def _centered(x: Tensor, scale: Tensor, zero_point: Tensor, qmax: int, relu: ReLU, dtype: torch.dtype) -> Tensor:
    return (activation_codes(x, scale, zero_point, qmax, relu) - zero_point).to(dtype)


def _centered_grad(
    grad: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, qmax: int, relu: ReLU, dtype: torch.dtype
) -> Tensor:
    inside = gradient_mask(x, scale, zero_point, qmax, relu)
    return torch.where(inside, grad.float() / scale, 0.0).to(dtype)


class _Quantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, opts: QuantizeOptions, x: Tensor, scale: Tensor, zero_point: Tensor):  # type: ignore[override]
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(x, scale, zero_point)
            ctx.opts = opts
        return call(_centered, (x, scale, zero_point, opts.qmax, opts.relu, opts.dtype), opts.compile)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, scale, zero_point = ctx.saved_tensors
        o = ctx.opts
        grad_x = call(_centered_grad, (grad, x, scale, zero_point, o.qmax, o.relu, x.dtype), o.compile)
        return None, grad_x, None, None


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, opts: QuantizeOptions) -> Tensor:
    """Centered codes of ``x``; straight-through gradient ``1 / scale`` where the code was not clipped (and the ReLU
    passed), else zero. The scale and zero point are constants."""
    return _Quantize.apply(opts, x, scale, zero_point)


def _rescale_and_range(
    accs: Sequence[Tensor], scales: Sequence[Tensor], w_scale: Tensor, bias: Tensor, stats: Optional[str]
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    y = rescale(accs, scales, w_scale, bias)
    if stats is None:
        return y, None, None
    lo, hi = torch.aminmax(torch.relu(y) if stats == "fused" else y)
    return y, lo, hi


_FIRST_INPUT = 4
"""Position of the first centered-codes tensor among ``_Linear.forward``'s arguments (after ctx)."""


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, opts: LinearOptions, weight, bias, qparams, *centered):  # type: ignore[override]
        w_scale = weight_scale(weight, opts.weight_qmax)
        w_parts = weight_codes(weight, w_scale, opts.weight_qmax).split([c.shape[-1] for c in centered], dim=1)
        accs = [
            codes_product(c, zero_point, w, opts.path.product, opts.compile)
            for c, (_, zero_point), w in zip(centered, qparams, w_parts, strict=True)
        ]
        scales = [scale for scale, _ in qparams]
        stats = ("fused" if opts.relu == "fused" else "plain") if opts.observe else None
        y, lo, hi = call(_rescale_and_range, (accs, scales, w_scale, bias, stats), opts.compile)
        ctx.save_for_backward(*centered)
        ctx.opts, ctx.w_scale, ctx.w_parts, ctx.scales = opts, w_scale, w_parts, scales
        if stats is None:
            return y
        ctx.mark_non_differentiable(lo, hi)
        return y, lo, hi

    @staticmethod
    def backward(ctx, grad, *_range):  # type: ignore[override]
        centered = ctx.saved_tensors
        dtype = ctx.opts.path.codes_dtype
        g = grad.to(dtype)
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            parts = [grad_product(g.T, c, dtype).float() * s for c, s in zip(centered, ctx.scales, strict=True)]
            grad_weight = torch.cat(parts, dim=1)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.float().sum(0)
        grad_centered = []
        for i, (w, s) in enumerate(zip(ctx.w_parts, ctx.scales, strict=True)):
            needed = ctx.needs_input_grad[_FIRST_INPUT + i]
            grad_centered.append(grad_product(g, w * (ctx.w_scale[:, None] * s), dtype) if needed else None)
        return None, grad_weight, grad_bias, None, *grad_centered


def linear(
    centered: Sequence[Tensor],
    qparams: Sequence[Tuple[Tensor, Tensor]],
    weight: Tensor,
    bias: Tensor,
    opts: LinearOptions,
):
    """The fake-quantized Linear on 2-D centered codes (one input per weight segment, each with its
    ``(scale, zero_point)``): the float output ``y``, or ``(y, min, max)`` with ``opts.observe``.

    Gradients reach the weight (straight through its codes), the bias and every input's codes; scales are constants.
    """
    return _Linear.apply(opts, weight, bias, tuple(qparams), *centered)
