"""The original NeRF MLP (NeRF paper, Fig. 7) built from fake-quantized layers.

Every Linear is quantized: the trunk is fused Linear+ReLU blocks, the density, feature and RGB heads are
quantized Linears, and both encoded inputs pass an activation quantizer before their first Linear.
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.layers import Activation, ActQuantizer, QuantLinear


class NeRFMLP(nn.Module):
    """Trunk of ``num_layers`` Linear+ReLU blocks (the encoded position re-enters at ``skip_layer``), a density
    head, a feature layer, a view-direction branch and an RGB head.

    Defaults (8 x 256, skip at layer index 4, 63-d positions, 27-d directions, 128-wide view branch) give the
    original network: 595,844 parameters.
    """

    def __init__(
        self,
        position_dim: int,
        direction_dim: int,
        quant: QuantConfig,
        num_layers: int = 8,
        layer_width: int = 256,
        skip_layer: int = 4,
        view_width: int = 128,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.position_quant = ActQuantizer(quant)
        self.direction_quant = ActQuantizer(quant)
        layers = []
        for i in range(num_layers):
            if i == 0:
                splits: Tuple[int, ...] = (position_dim,)
            elif i == skip_layer:
                splits = (layer_width, position_dim)
            else:
                splits = (layer_width,)
            layers.append(QuantLinear(splits, layer_width, quant, relu=True))
        self.trunk = nn.ModuleList(layers)
        self.skip_layer = skip_layer
        self.density_head = QuantLinear((layer_width,), 1, quant)
        self.feature = QuantLinear((layer_width,), layer_width, quant, quantize_output=True)
        self.view = QuantLinear((layer_width, direction_dim), view_width, quant, relu=True)
        self.rgb_head = QuantLinear((view_width,), 3, quant)

    def density(self, position_enc: Float[Tensor, "*bs P"]) -> Tuple[Float[Tensor, "*bs 1"], Activation]:
        """Raw (pre-activation) density and the trunk output that the color branch reads."""
        x = self.position_quant(position_enc)
        h: Activation = x
        for i, layer in enumerate(self.trunk):
            h = layer(h, x) if i == self.skip_layer and i > 0 else layer(h)
        return self.density_head(h), h

    def color(self, trunk_out: Activation, direction_enc: Float[Tensor, "*bs D"]) -> Float[Tensor, "*bs 3"]:
        """RGB in [0, 1] from the trunk output and the encoded view direction."""
        return torch.sigmoid(self.color_logits(trunk_out, direction_enc))

    def color_logits(self, trunk_out: Activation, direction_enc: Float[Tensor, "*bs D"]) -> Float[Tensor, "*bs 3"]:
        """``color`` before its sigmoid."""
        feature = self.feature(trunk_out)
        view = self.view(feature, self.direction_quant(direction_enc))
        return self.rgb_head(view)
