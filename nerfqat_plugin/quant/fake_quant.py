"""Quantization arithmetic shared by training (fake quantization) and export (integer codes).

Everything here works on integer *codes*: a quantized tensor is ``codes * scale`` where ``codes`` holds
integer values (already minus the zero point). Training keeps the codes in a float tensor (``ops`` adds the
straight-through gradients); export stores the same codes as integers. Both call
the functions below, so the integers stored are exactly the ones the trained model saw.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

_EPS = 1e-8


class QTensor(NamedTuple):
    """An activation on an integer grid: its value is ``codes * scale``."""

    codes: Tensor
    """Integer-valued codes minus the zero point, in a float tensor (training) or an integer tensor (export)."""
    scale: Tensor
    """Step between neighbouring codes (a 0-d tensor)."""
    zero_point: Optional[Tensor] = None
    """Zero point the codes are relative to (0-d); lets an integer kernel take ``codes + zero_point`` as uint8."""

    def dequantize(self) -> Tensor:
        return self.codes * self.scale


def round_codes(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """``clamp(round(x / scale) + zero_point, qmin, qmax)``: the stored integer code (ties round to even)."""
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


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
    return round_codes(weight.detach(), scale[:, None], torch.zeros((), device=weight.device), -qmax, qmax)


def activation_qparams(min_val: Tensor, max_val: Tensor, qmax: int) -> Tuple[Tensor, Tensor]:
    """Asymmetric per-tensor ``(scale, zero_point)`` for codes ``[0, qmax]``; zero is always exactly representable.

    After a ReLU ``min_val`` is 0, so the zero point is 0 and all codes are spent on ``[0, max]``.
    """
    lo = torch.clamp(min_val, max=0.0)
    hi = torch.clamp(max_val, min=0.0)
    scale = torch.clamp((hi - lo) / qmax, min=_EPS)
    zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero_point
