"""Fake-quantized building blocks: an activation quantizer and a Linear (optionally fused with its ReLU).

Drop-in for any MLP: build the layers from a ``QuantConfig``, feed the first layer the output of an
``ActQuantizer``, and switch simulation on or off for the whole module with ``set_quant_state``.

While quantization is active the layers pass ``QTensor`` values (centered codes and a scale) to one another.
A Linear multiplies the centered codes of its input by the codes of its weight and scales the result once:

    y = (x_centered @ w_codes.T) * (x_scale * w_scale) + bias

The product of codes holds small integers, which fp32 represents exactly (|sum| < 2**24), so this is the
value an integer kernel computes, and the exported model can reproduce it bit for bit.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.dispatch import FP32, MatmulMode, TrainPath, train_path
from nerfqat_plugin.quant.distributed import data_parallel
from nerfqat_plugin.quant.ops import LinearOptions, QuantizeOptions, linear, quantize
from nerfqat_plugin.quant.rounding import QTensor, ReLU, activation_qparams, relu_mode

Activation = Union[Tensor, QTensor]


class QuantModule(nn.Module):
    """Base of the modules whose simulation ``set_quant_state`` switches."""

    quant_active: bool = False
    """Simulate quantization (True) or compute in plain floating point (False)."""
    observing: bool = True
    """Let activation observers update their ranges in training mode."""
    compile: bool = False
    """Fuse the fake-quantization arithmetic with ``torch.compile`` (same result, fewer passes over memory)."""
    matmul: MatmulMode = False
    """How products are formed (``dispatch.train_path``): "auto" (measured), True (fast on paper), False (fp32)."""


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
        self.pending: Optional[Tuple[Tensor, Tensor]] = None
        """This step's batch range, not yet folded in (data parallel training only)."""

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        self.observe_range(*torch.aminmax(x.detach()))

    @torch.no_grad()
    def observe_range(self, lo: Tensor, hi: Tensor) -> None:
        """Fold one batch's range into the moving min/max; with several processes, keep it pending until
        ``distributed.sync_observers`` reduces it across them. Not again when autograd recomputes a forward."""
        if torch._C._current_graph_task_id() != -1:  # inside a backward pass: a checkpointed forward run again
            return
        lo, hi = lo.float(), hi.float()
        if data_parallel():
            if self.pending is not None:
                lo, hi = torch.minimum(lo, self.pending[0]), torch.maximum(hi, self.pending[1])
            self.pending = (lo, hi)
            return
        self.fold(lo, hi)

    @torch.no_grad()
    def fold(self, lo: Tensor, hi: Tensor) -> None:
        """The moving average: the first batch's range is taken, later ones move it by ``momentum``."""
        # branch-free, so no device-to-host sync
        self.min_val.copy_(torch.where(self.initialized, self.min_val.lerp(lo, self.momentum), lo))
        self.max_val.copy_(torch.where(self.initialized, self.max_val.lerp(hi, self.momentum), hi))
        self.initialized.fill_(True)

    def qparams(self):
        """``(scale, zero_point)`` from the observed range (before any batch is folded in: the pending one's)."""
        lo, hi = self.min_val, self.max_val
        if self.pending is not None:
            lo = torch.where(self.initialized, lo, self.pending[0])
            hi = torch.where(self.initialized, hi, self.pending[1])
        return activation_qparams(lo, hi, self.qmax)

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

    def quantize(self, x: Tensor, relu: ReLU = None, dtype: torch.dtype = torch.float32) -> QTensor:
        """Centered codes of ``x`` (as ``dtype``) with the current range, the ReLU applied as ``relu`` says; no
        observing."""
        scale, zero_point = self.qparams()
        opts = QuantizeOptions(self.qmax, relu, dtype, self.compile)
        return QTensor(quantize(x, scale, zero_point, opts), scale, zero_point)


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
        self.act_qmax = config.activation_qmax
        self.relu: ReLU = relu_mode(relu, config.fused)
        self.out_quant = ActQuantizer(config) if (relu or quantize_output) else None

    def train_path(self, device: torch.device, rows: Optional[int] = None) -> TrainPath:
        """How this layer multiplies on ``device`` given ``rows`` rows (decided once per process, shape and bucket of
        rows, see ``dispatch``)."""
        if self.matmul is False:
            return FP32
        k, n = max(self.in_splits), self.out_features
        return train_path(device, k, n, self.act_qmax, self.weight_qmax, self.matmul, rows)

    def linear(self, inputs: Sequence[Activation]) -> Tensor:
        """The Linear part alone: float output (the scaled product of codes when quantization is active)."""
        if not self.quant_active:
            x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=-1)  # type: ignore[arg-type]
            return F.linear(x, self.weight, self.bias)  # type: ignore[arg-type]
        y, _ = self._quant_linear(inputs, observe=False)
        return y

    def _quant_linear(self, inputs: Sequence[Activation], observe: bool):
        """``(y, range)``: the fake-quantized Linear's float output and, with ``observe``, its ``(min, max)`` as the
        output quantizer reads it (of ``relu(y)`` when fused)."""
        for x in inputs:
            if not isinstance(x, QTensor):
                raise TypeError(f"{type(self).__name__}: quantized input expected, got {type(x).__name__}")
        batch = inputs[0].centered.shape[:-1]  # type: ignore[union-attr]
        path = self.train_path(self.weight.device, batch.numel())
        opts = LinearOptions(self.weight_qmax, path, self.compile, observe, self.relu)
        result = linear(
            [x.centered.reshape(-1, x.centered.shape[-1]) for x in inputs],  # type: ignore[union-attr]
            [(x.scale, x.zero_point) for x in inputs],  # type: ignore[union-attr]
            self.weight,
            self.bias,
            opts,
        )
        y, value_range = (result[0], result[1:]) if observe else (result, None)
        return y.reshape(*batch, y.shape[-1]), value_range

    def forward(self, *inputs: Activation) -> Activation:
        if len(inputs) != len(self.in_splits):
            raise ValueError(f"{type(self).__name__} expects {len(self.in_splits)} inputs, got {len(inputs)}")
        quant = self.out_quant
        if not self.quant_active:
            y = self.linear(inputs)
            if quant is None:
                return y
            if self.relu == "fused":
                return quant(torch.relu(y))
            q = quant(y)
            return torch.relu(q) if self.relu == "unfused" else q  # type: ignore[arg-type]
        if quant is None:
            return self.linear(inputs)
        # the Linear (and the range of its output), the observer update, then the rounding with the updated range
        y, value_range = self._quant_linear(inputs, observe=quant.updating)
        if value_range is not None:
            quant.observe_range(*value_range)
        # the next layer reads these codes: bf16 where this layer's gradient products are bf16 (exact either way)
        return quant.quantize(y, self.relu, self.train_path(self.weight.device, y[..., 0].numel()).codes_dtype)


def set_quant_state(module: nn.Module, active: bool, observe: bool) -> None:
    """Switch fake quantization and observer updates for every quantized layer inside ``module``."""
    for m in module.modules():
        if isinstance(m, QuantModule):
            m.quant_active = active
            m.observing = observe


def set_train_kernels(module: nn.Module, compile: bool, matmul: MatmulMode) -> None:
    """How every quantized layer inside ``module`` computes: see ``QuantModule.compile`` and ``.matmul``."""
    for m in module.modules():
        if isinstance(m, QuantModule):
            m.compile = compile
            m.matmul = matmul
