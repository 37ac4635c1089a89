"""The one quantization rule, shared by fake quantization (training) and the integer kernels (export).

Words used throughout ``nerfqat_plugin.quant``:

- **code**: the integer a value is stored as. Activations: unsigned, ``0..qmax``, with a zero point,
  value = ``(code - zero_point) * scale``. Weights: symmetric, ``-qmax..qmax``, zero point 0, value = ``code * scale``.
- **centered code**: ``code - zero_point``, the signed integer a Linear multiplies (what training passes on).
- **ReLU mode** of a Linear's output (``ReLU``): ``"fused"`` quantizes the ReLU output over ``[0, max]``;
  ``"unfused"`` quantizes the signed output, then the ReLU clamps the codes at the zero point; ``None``: no ReLU.

Every function here is plain tensor arithmetic: training runs it (compiled or not) on float tensors, the integer
kernels on the same values, so the codes an export stores are the ones the trained model used.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

ReLU = Optional[Literal["fused", "unfused"]]
"""How a Linear's ReLU meets its output quantizer (see the module docstring)."""

_EPS = 1e-8


def relu_mode(relu: bool, fused: bool) -> ReLU:
    """The ``ReLU`` of a Linear with or without a ReLU, fused or not."""
    return ("fused" if fused else "unfused") if relu else None


def grid(x: Tensor, scale: Tensor, zero_point: Tensor, lo: int, hi: int) -> Tensor:
    """``clamp(round(x * (1 / scale) + zero_point), lo, hi)``: the rule every code is made by (ties round to even).

    The order is oneDNN's requantization's: the reciprocal of the scale (rounded to fp32) times ``x``, plus the
    zero point, then the rounding. ``round(x / scale) + zero_point`` differs from it for about one value in 10^5,
    so the fused integer kernel agrees with training only under this order."""
    return torch.clamp(torch.round(x * (1.0 / scale) + zero_point), lo, hi)


def activation_codes(y: Tensor, scale: Tensor, zero_point: Tensor, qmax: int, relu: ReLU = None) -> Tensor:
    """Unsigned codes ``0..qmax`` of ``y`` (float tensor holding integers), with the ReLU applied as ``relu`` says."""
    q = grid(torch.relu(y) if relu == "fused" else y, scale, zero_point, 0, qmax)
    return torch.maximum(q, zero_point) if relu == "unfused" else q


def gradient_mask(y: Tensor, scale: Tensor, zero_point: Tensor, qmax: int, relu: ReLU = None) -> Tensor:
    """Where the straight-through gradient of ``activation_codes`` passes: code not clipped, and the ReLU open."""
    q = torch.round((torch.relu(y) if relu == "fused" else y) * (1.0 / scale) + zero_point)
    inside = (q >= 0) & (q <= qmax)
    if relu == "fused":
        inside = inside & (y > 0)
    elif relu == "unfused":
        inside = inside & (q > zero_point)
    return inside


def rescale(accs: Sequence[Tensor], scales: Sequence[Tensor], w_scale: Tensor, bias: Tensor) -> Tensor:
    """``y = (acc_n * (s_n * w_scale) + bias) + (acc_1 * (s_1 * w_scale) + ... + acc_n-1 * (s_n-1 * w_scale))``:
    integer accumulators of each input segment to the float output, the last input's term plus the bias first.

    The one scaling of accumulators: training and the integer kernels both call it, so they round alike. The order
    is oneDNN's (a Linear over several inputs: the earlier inputs' sum enters the last one's call as its "sum"
    post-op, after the bias), so the fused kernel rounds alike too.
    """
    parts = [acc * (s * w_scale) for acc, s in zip(accs, scales, strict=True)]
    y = parts[-1] + bias
    if len(parts) == 1:
        return y
    rest = parts[0]
    for part in parts[1:-1]:
        rest = rest + part
    return y + rest


def round_up_to_bf16(x: Tensor) -> Tensor:
    """Smallest bfloat16 value >= ``x`` (positive ``x``), returned as float32."""
    rounded = x.to(torch.bfloat16)
    bumped = (rounded.view(torch.int16) + 1).view(torch.bfloat16)
    return torch.where(rounded.float() < x, bumped, rounded).float()


def weight_scale(weight: Tensor, qmax: int) -> Tensor:
    """Symmetric per-output-channel scale, shape ``[out]``: the largest magnitude of each row maps to ``qmax``.

    The scale is rounded up to a bfloat16 value, so export stores it in 2 bytes without changing the model,
    and no weight is clipped.
    """
    return round_up_to_bf16(weight.detach().abs().amax(dim=1).clamp_min(_EPS) / qmax)


def weight_codes(weight: Tensor, scale: Tensor, qmax: int) -> Tensor:
    """Integer weight codes in ``[-qmax, qmax]`` (float tensor, no gradient)."""
    return grid(weight.detach(), scale[:, None], torch.zeros((), device=weight.device), -qmax, qmax)


def activation_qparams(min_val: Tensor, max_val: Tensor, qmax: int) -> Tuple[Tensor, Tensor]:
    """Asymmetric per-tensor ``(scale, zero_point)`` for codes ``[0, qmax]``; zero is always exactly representable.

    After a ReLU ``min_val`` is 0, so the zero point is 0 and all codes are spent on ``[0, max]``.
    """
    lo = torch.clamp(min_val, max=0.0)
    hi = torch.clamp(max_val, min=0.0)
    scale = torch.clamp((hi - lo) / qmax, min=_EPS)
    zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero_point


class QTensor(NamedTuple):
    """A fake-quantized activation: its value is ``centered * scale``."""

    centered: Tensor
    """Centered codes (code minus zero point), integers held in a float tensor (fp32 or bf16, both exact)."""
    scale: Tensor
    """Step between neighbouring codes (a 0-d tensor)."""
    zero_point: Tensor
    """Zero point of the codes (0-d): ``centered + zero_point`` is the unsigned code an integer kernel takes."""

    def dequantize(self) -> Tensor:
        return self.centered * self.scale
