"""A plain MLP of fake-quantized layers, shaped as nerfstudio's ``MLP`` (``field_components.mlp``).

``num_layers`` Linears: input to ``layer_width``, ``num_layers - 2`` hidden, ``layer_width`` to ``out_dim`` (one
Linear, input to output, when ``num_layers`` is 1); every Linear but the last is fused with its ReLU. The input may
be the concatenation of several parts (``in_splits``: a feature vector, an encoded direction, an embedding), each
quantized with a range of its own before the first Linear, which takes them as its separate inputs.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.layers import Activation, ActQuantizer, QuantLinear


class QuantMLP(nn.Module):
    """``x [..., sum(in_splits)] -> [..., out_dim]``, float output (``out_activation`` applied, if any)."""

    def __init__(
        self,
        in_splits: Sequence[int],
        num_layers: int,
        layer_width: int,
        out_dim: int,
        quant: QuantConfig,
        out_activation: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.in_splits = tuple(int(s) for s in in_splits)
        self.in_dim = sum(self.in_splits)
        self.out_dim = out_dim
        self.input_quant = nn.ModuleList(ActQuantizer(quant) for _ in self.in_splits)
        widths = [layer_width] * (num_layers - 1) + [out_dim]
        layers = []
        for i, width in enumerate(widths):
            splits = self.in_splits if i == 0 else (layer_width,)
            layers.append(QuantLinear(splits, width, quant, relu=i < len(widths) - 1))
        self.layers = nn.ModuleList(layers)
        self.out_activation = out_activation

    def get_out_dim(self) -> int:
        return self.out_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"{type(self).__name__}: input of {self.in_dim} features expected, got {x.shape[-1]}")
        parts = torch.split(x, self.in_splits, dim=-1)
        h: Activation = self.layers[0](*(q(p) for q, p in zip(self.input_quant, parts, strict=True)))
        for layer in self.layers[1:]:
            h = layer(h)
        assert isinstance(h, Tensor)
        return h if self.out_activation is None else self.out_activation(h)
