"""nerfstudio field around the quantized NeRF MLP: positional encodings, density noise, field heads."""

from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple

import torch
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field
from nerfstudio.utils.external import TCNN_EXISTS
from torch import Tensor, nn

from nerfqat_plugin.quant.layers import Activation

EncodingImpl = Literal["auto", "tcnn", "torch"]


def nerf_encoding(in_dim: int, num_frequencies: int, implementation: EncodingImpl) -> NeRFEncoding:
    """sin/cos at frequencies ``2**k * pi`` (k < num_frequencies) of the input, plus the input itself.

    nerfstudio multiplies the input by ``2 * pi * 2**k``; the field feeds it half the coordinates, so the
    frequencies are those of the original NeRF and the settings stay the ones tinycudann accepts.
    """
    impl = ("tcnn" if TCNN_EXISTS else "torch") if implementation == "auto" else implementation
    return NeRFEncoding(
        in_dim=in_dim,
        num_frequencies=num_frequencies,
        min_freq_exp=0.0,
        max_freq_exp=float(num_frequencies - 1),
        include_input=True,
        implementation=impl,
    )


class QuantNeRFField(Field):
    """Density and color of a scene from a ``NeRFMLP`` (fake-quantized in training, integer after export)."""

    def __init__(
        self,
        mlp: nn.Module,
        position_encoding: NeRFEncoding,
        direction_encoding: NeRFEncoding,
        raw_noise_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.position_encoding = position_encoding
        self.direction_encoding = direction_encoding
        self.mlp = mlp
        self.raw_noise_std = raw_noise_std

    @property
    def encoding(self) -> str:
        """The positional encoding's implementation: 'tcnn' or 'torch' (their features differ in order and scale)."""
        return "tcnn" if self.position_encoding.tcnn_encoding is not None else "torch"

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Activation]:  # type: ignore[override]
        positions = ray_samples.frustums.get_positions()
        raw, trunk_out = self.mlp.density(self.position_encoding(0.5 * positions))
        if self.training and self.raw_noise_std > 0:
            raw = raw + torch.randn_like(raw) * self.raw_noise_std
        return torch.relu(raw), trunk_out

    def get_outputs(  # type: ignore[override]
        self, ray_samples: RaySamples, density_embedding: Optional[Activation] = None
    ) -> Dict[FieldHeadNames, Tensor]:
        assert density_embedding is not None
        # a model that warps rays (NDC) passes the world viewing direction along in the ray metadata
        view_dirs = (ray_samples.metadata or {}).get("view_directions", ray_samples.frustums.directions)
        directions = self.direction_encoding(0.5 * view_dirs)
        return {FieldHeadNames.RGB: self.mlp.color(density_embedding, directions)}
