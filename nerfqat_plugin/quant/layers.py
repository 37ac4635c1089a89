"""Fake-quantized building blocks: an activation quantizer and a Linear (optionally fused with its ReLU).

Drop-in for any MLP: build the layers from a ``QuantConfig``, feed the first layer the output of an
``ActQuantizer``, and switch simulation on or off for the whole module with ``set_quant_state``.

While quantization is active the layers pass ``QTensor`` values (integer codes and a scale) to one another.
A Linear multiplies the codes of its input by the codes of its weight and scales the result once:

    y = (x_codes @ w_codes.T) * (x_scale * w_scale) + bias

The product of codes holds small integers, which fp32 represents exactly (|sum| < 2**24), so this is the
value an integer kernel computes, and the exported model can reproduce it bit for bit.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.fake_quant import QTensor, activation_qparams
from nerfqat_plugin.quant.ops import OutputQuant, quant_linear, quantize

Activation = Union[Tensor, QTensor]


class QuantModule(nn.Module):
    """Base of the modules whose simulation ``set_quant_state`` switches."""

    quant_active: bool = False
    """Simulate quantization (True) or compute in plain floating point (False)."""
    observing: bool = True
    """Let activation observers update their ranges in training mode."""
    compile: bool = False
    """Fuse the fake-quantization arithmetic with ``torch.compile`` (same result, fewer passes over memory)."""
    fast_matmul: bool = False
    """Codes as bf16, exact int8/bf16 codes products, bf16 gradient products (``fast`` in ``ops``)."""


class ActQuantizer(QuantModule):
    """Per-tensor asymmetric activation quantizer with a moving-average min/max observer.

    Buffers ``min_val``/``max_val`` are part of the state dict, so a checkpoint restores the ranges exactly.
    """

    def __init__(self, config: QuantConfig) -> None:
        super().__init__()
        self.qmax = config.activation_qmax
        self.momentum = config.observer_momentum
        self.register_buffer("min_val", torch.zeros(()))
        self.register_buffer("max_val", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        self.observe_range(*torch.aminmax(x.detach()))

    @torch.no_grad()
    def observe_range(self, lo: Tensor, hi: Tensor) -> None:
        """Fold one batch's range into the moving min/max."""
        lo, hi = lo.float(), hi.float()
        # first batch: take its range; later: moving average. Branch-free, so no device-to-host sync.
        self.min_val.copy_(torch.where(self.initialized, self.min_val.lerp(lo, self.momentum), lo))
        self.max_val.copy_(torch.where(self.initialized, self.max_val.lerp(hi, self.momentum), hi))
        self.initialized.fill_(True)

    def qparams(self):
        """``(scale, zero_point)`` from the observed range."""
        return activation_qparams(self.min_val, self.max_val, self.qmax)

    @property
    def updating(self) -> bool:
        """Whether the next training-mode call moves the observed range."""
        return self.training and self.observing

    def forward(self, x: Tensor) -> Activation:
        if self.updating:
            self.observe(x)
        if not self.quant_active:
            return x
        return self.quantize(x)

    def quantize(self, x: Tensor) -> QTensor:
        """Codes of ``x`` with the current range (no observing)."""
        scale, zero_point = self.qparams()
        codes = quantize(x, scale, zero_point, self.qmax, compile=self.compile, fast=self.fast_matmul)
        return QTensor(codes, scale, zero_point)


class QuantLinear(nn.Linear, QuantModule):
    """Linear layer with per-output-channel symmetric fake-quantized weights.

    Takes one or more inputs (``in_splits`` gives their widths); several inputs act as their concatenation,
    each with its own activation scale (the skip connection and the view-direction branch of a NeRF).
    With ``relu`` the ReLU is fused (``config.fused``: quantize the ReLU output over ``[0, max]``) or not
    (quantize the signed Linear output, then apply the ReLU). With ``quantize_output`` and no ReLU, the
    signed output is quantized for the next layer. Otherwise the output stays floating point.
    """

    def __init__(
        self,
        in_splits: Sequence[int],
        out_features: int,
        config: QuantConfig,
        relu: bool = False,
        quantize_output: bool = False,
    ) -> None:
        super().__init__(sum(in_splits), out_features)
        self.in_splits = tuple(int(s) for s in in_splits)
        self.weight_qmax = config.weight_qmax
        self.relu = relu
        self.fused = config.fused
        self.out_quant = ActQuantizer(config) if (relu or quantize_output) else None

    def linear(self, inputs: Sequence[Activation]) -> Tensor:
        """The Linear part alone: float output (dequantized accumulator when quantization is active)."""
        if not self.quant_active:
            x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=-1)  # type: ignore[arg-type]
            return F.linear(x, self.weight, self.bias)
        return self._quant_linear(inputs, None)

    def _quant_linear(self, inputs: Sequence[Activation], out: Optional[OutputQuant]):
        for x in inputs:
            if not isinstance(x, QTensor):
                raise TypeError(f"{type(self).__name__}: quantized input expected, got {type(x).__name__}")
        batch = inputs[0].codes.shape[:-1]  # type: ignore[union-attr]
        result = quant_linear(
            [x.codes.reshape(-1, x.codes.shape[-1]) for x in inputs],  # type: ignore[union-attr]
            [x.scale for x in inputs],  # type: ignore[union-attr]
            [x.zero_point for x in inputs],  # type: ignore[union-attr]
            self.weight,
            self.bias,
            self.weight_qmax,
            out,
            self.compile,
            self.fast_matmul,
        )
        if out is None:
            return result.reshape(*batch, result.shape[-1])
        codes, scale, zero_point = result
        return QTensor(codes.reshape(*batch, codes.shape[-1]), scale, zero_point)

    def forward(self, *inputs: Activation) -> Activation:
        if len(inputs) != len(self.in_splits):
            raise ValueError(f"{type(self).__name__} expects {len(self.in_splits)} inputs, got {len(inputs)}")
        relu_before = self.relu and self.fused
        relu_after = self.relu and not self.fused
        quant = self.out_quant
        if not self.quant_active:
            y = self.linear(inputs)
            if quant is None:
                return y
            if relu_before:
                return quant(torch.relu(y))
            q = quant(y)
            return torch.relu(q) if relu_after else q  # type: ignore[arg-type]
        if quant is None:
            return self.linear(inputs)
        # One node: Linear, observer update (the value it quantizes: the ReLU output when fused), rounding.
        # Unfused: ReLU after quantization; on the grid it clamps the codes at zero (the zero point).
        return self._quant_linear(inputs, OutputQuant(quant, quant.updating, relu_before, relu_after))


def set_quant_state(module: nn.Module, active: bool, observe: bool) -> None:
    """Switch fake quantization and observer updates for every quantized layer inside ``module``."""
    for m in module.modules():
        if isinstance(m, QuantModule):
            m.quant_active = active
            m.observing = observe


def set_fake_quant_speed(module: nn.Module, compile: bool, fast_matmul: bool) -> None:
    """How every quantized layer inside ``module`` computes: see ``QuantModule.compile`` and ``.fast_matmul``."""
    for m in module.modules():
        if isinstance(m, QuantModule):
            m.compile = compile
            m.fast_matmul = fast_matmul
