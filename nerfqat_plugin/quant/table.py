"""Fake-quantized lookup tables: rows stored as low-bit codes, one learned step per group of rows.

A table (an embedding, the levels of a hash grid) is a float parameter ``[groups * rows_per_group, features]``;
row ``i`` belongs to group ``i // rows_per_group``. Quantized, an entry is ``code * step[group]`` with a symmetric
code in ``[-qmax, qmax]`` (``qmax = 2**(bits - 1) - 1``: 2 bits give -1, 0, 1) made by the core's one rule
(``rounding.grid``), so an export that stores the codes and the steps gives back the values training used.

Only the rows a step gathers are quantized (a hash grid reads a few thousand of its million rows a batch), and the
gradient goes straight through to the float rows (zero where a code is clipped). The steps are learned as in LSQ
(Esser et al., "Learned Step Size Quantization", ICLR 2020): d value / d step is ``code - x / step`` inside the
range and ``+-qmax`` where clipped, scaled by ``1 / sqrt(values gathered x qmax)``. A step is kept as its logarithm,
so an optimizer's update moves it by a fraction of itself (Adam at a hash grid's learning rate, 1e-2, would move a
step of 1e-3 by ten times its size). The steps start from the table itself when quantization first runs
(``calibrate``): per group, the step with the least squared error over its rows among ``CALIBRATION_FRACTIONS`` of
the largest magnitude over ``qmax`` (1: nothing clipped; at 2 bits clipping the few largest entries keeps the many
mid-sized ones from rounding to zero).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor, nn

from nerfqat_plugin.quant.layers import QuantModule
from nerfqat_plugin.quant.rounding import grid

CALIBRATION_FRACTIONS = tuple(i / 20 for i in range(20, 0, -1))
"""Candidate steps of ``calibrate``, as fractions of (largest magnitude / qmax)."""


def table_qmax(bits: int) -> int:
    """Largest code of a ``bits``-bit symmetric table code (2..8 bits)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"table codes must have 2 to 8 bits, got {bits}")
    return 2 ** (bits - 1) - 1


class _LearnedStep(torch.autograd.Function):
    """``grid(x / step) * step`` forward; straight-through to ``x``, LSQ to ``step`` (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, qmax: int, grad_scale: float) -> Tensor:  # type: ignore[override]
        codes = grid(x, step, torch.zeros((), device=x.device), -qmax, qmax)
        ctx.save_for_backward(x, step, codes)
        ctx.qmax, ctx.grad_scale = qmax, grad_scale
        return codes * step

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, step, codes = ctx.saved_tensors
        ratio = x / step
        inside = ratio.abs() <= ctx.qmax
        grad_x = torch.where(inside, grad, torch.zeros_like(grad))
        d_step = torch.where(inside, codes - ratio, torch.sign(ratio) * ctx.qmax)
        grad_step = (grad * d_step * ctx.grad_scale).sum_to_size(step.shape)
        return grad_x, grad_step, None, None


def fake_quantize_rows(x: Tensor, step: Tensor, qmax: int) -> Tensor:
    """Rows ``x`` [..., features] as ``code * step`` with ``step`` [..., 1] (one per row, from its group); gradients
    to both (the step's scaled by the number of values)."""
    grad_scale = 1.0 / math.sqrt(max(x.numel(), 1) * qmax)
    return _LearnedStep.apply(x, step, qmax, grad_scale)


class QuantTable(QuantModule):
    """A ``[groups * rows_per_group, features]`` float table read by row index, fake-quantized per group while
    ``quant_active`` (``bits`` bits, learned steps)."""

    def __init__(self, groups: int, rows_per_group: int, features: int, bits: int, init: Tensor) -> None:
        super().__init__()
        if tuple(init.shape) != (groups * rows_per_group, features):
            raise ValueError(
                f"table of {groups} x {rows_per_group} rows of {features} features: init has shape {tuple(init.shape)}"
            )
        self.groups, self.rows_per_group, self.features = groups, rows_per_group, features
        self.bits = bits
        self.qmax = table_qmax(bits)
        self.weight = nn.Parameter(init.detach().clone().float())
        self.log_step = nn.Parameter(torch.zeros(groups))
        """The natural logarithm of each group's learned step (set from the table by ``calibrate``)."""
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.register_buffer("code_bits", torch.tensor(bits))
        """The bits the steps were learned for (a state dict of another width does not load)."""
        self._calibrated = False
        """``calibrated`` as last read (reading the buffer would wait for the device on every call)."""

    @property
    def steps(self) -> Tensor:
        """Each group's step [groups] (with gradients to ``log_step``)."""
        return torch.exp(self.log_step)

    @torch.no_grad()
    def calibrate(self) -> None:
        """Each group's step from its rows (see the module docstring)."""
        rows = self.weight.detach().reshape(self.groups, -1)
        peak = torch.clamp(rows.abs().amax(dim=1), min=1e-12) / self.qmax
        zero = torch.zeros((), device=rows.device)
        best, best_error = peak.clone(), torch.full_like(peak, float("inf"))
        for fraction in CALIBRATION_FRACTIONS:
            step = (peak * fraction)[:, None]
            error = ((grid(rows, step, zero, -self.qmax, self.qmax) * step - rows) ** 2).sum(dim=1)
            better = error < best_error
            best, best_error = torch.where(better, step[:, 0], best), torch.where(better, error, best_error)
        self.log_step.copy_(torch.log(best))
        self.calibrated.fill_(True)
        self._calibrated = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        stored = state_dict.get(prefix + "code_bits")
        if stored is not None and int(stored) != self.bits:
            raise ValueError(
                f"{prefix.rstrip('.')}: the state has {int(stored)}-bit table codes, this table has {self.bits} bits "
                "(train or load with the same table bits)"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calibrated = False  # read the loaded buffer on the next call

    def forward(self, index: Tensor) -> Tensor:
        """Rows ``index`` [...] of the table: [..., features]. Without gradients (rendering) the rows are read by
        ``index_select`` (3x faster on a CPU than indexing, the same values); with them by indexing, whose backward
        sums a row's gradients in the order nerfstudio's hash encoding does."""
        if torch.is_grad_enabled():
            rows = self.weight[index]
        else:
            rows = self.weight.index_select(0, index.reshape(-1)).view(*index.shape, self.features)
        if not self.quant_active:
            return rows
        if not self._calibrated:
            if not bool(self.calibrated):
                self.calibrate()
            self._calibrated = True
        step = self.steps[torch.div(index, self.rows_per_group, rounding_mode="floor")]
        return fake_quantize_rows(rows, step[..., None], self.qmax)

    @torch.no_grad()
    def codes(self) -> Tuple[Tensor, Tensor]:
        """``(codes [rows, features] int8, steps [groups] fp32)``: what an export stores; ``codes * steps[group]`` is
        the value the forward gives for every row."""
        step = self.steps
        per_row = step.repeat_interleave(self.rows_per_group)[:, None]
        codes = grid(self.weight, per_row, torch.zeros((), device=step.device), -self.qmax, self.qmax)
        return codes.to(torch.int8), step.detach().clone()
