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

from nerfqat_plugin.quant.compiled import call
from nerfqat_plugin.quant.int8 import one_graph
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
        cpu_tile_samples: int = 0,
    ) -> None:
        super().__init__()
        self.position_encoding = position_encoding
        self.direction_encoding = direction_encoding
        self.mlp = mlp
        self.raw_noise_std = raw_noise_std
        self.cpu_tile_samples = cpu_tile_samples

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

    def density_at(self, positions: Tensor) -> Tensor:
        """Density at points [n, 3] (no noise, whatever the mode): what the occupancy grid is updated from."""
        raw, _ = self.mlp.density(self.position_encoding(0.5 * positions))
        return torch.relu(raw)

    def get_outputs(  # type: ignore[override]
        self, ray_samples: RaySamples, density_embedding: Optional[Activation] = None
    ) -> Dict[FieldHeadNames, Tensor]:
        assert density_embedding is not None
        directions = self.direction_encoding(0.5 * view_directions(ray_samples))
        return {FieldHeadNames.RGB: self.mlp.color(density_embedding, directions)}

    def forward(self, ray_samples: RaySamples, compute_normals: bool = False) -> Dict[FieldHeadNames, Tensor]:
        """As nerfstudio's ``Field.forward``. Rendering on a CPU without gradients, the MLP runs over tiles of
        ``cpu_tile_samples`` samples, so that each tile's activations stay in the CPU's caches from one layer to the
        next, and an integer MLP whose layers allow it (``int8.one_graph``) runs each tile as one compiled graph.
        The values are the same: every sample is computed on its own, by the same arithmetic."""
        if compute_normals or torch.is_grad_enabled() or ray_samples.frustums.origins.device.type != "cpu":
            return super().forward(ray_samples, compute_normals)
        positions = ray_samples.frustums.get_positions()
        density, rgb = self.points(positions, view_directions(ray_samples))
        return {FieldHeadNames.DENSITY: density, FieldHeadNames.RGB: rgb}

    @torch.no_grad()
    def points(self, positions: Tensor, view_dirs: Tensor) -> Tuple[Tensor, Tensor]:
        """(density [..., 1], rgb [..., 3]) at points [..., 3] seen along world directions [..., 3], for rendering
        (no gradients, no density noise): on a CPU in tiles (see ``forward``), elsewhere all at once."""
        batch = positions.shape[:-1]
        positions = positions.reshape(-1, 3)
        view_dirs = view_dirs.reshape(-1, 3)
        on_cpu = positions.device.type == "cpu"
        tile = self.cpu_tile_samples if on_cpu and self.cpu_tile_samples > 0 else max(positions.shape[0], 1)
        whole = one_graph(self.mlp, positions.device, min(tile, positions.shape[0])) if on_cpu else False
        densities, colors = [], []
        for start in range(0, positions.shape[0], tile):
            position_enc = self.position_encoding(0.5 * positions[start : start + tile])
            direction_enc = self.direction_encoding(0.5 * view_dirs[start : start + tile])
            density, logits = call(_mlp_outputs, (self.mlp, position_enc, direction_enc), whole)
            densities.append(density)
            colors.append(torch.sigmoid(logits))  # eager: compiled, it may differ in the last bit
        if not densities:
            return positions.new_zeros(*batch, 1), positions.new_zeros(*batch, 3)
        return torch.cat(densities).reshape(*batch, -1), torch.cat(colors).reshape(*batch, -1)


def _mlp_outputs(mlp: nn.Module, position_enc: Tensor, direction_enc: Tensor) -> Tuple[Tensor, Tensor]:
    """Density and RGB logits of encoded samples (no density noise: rendering)."""
    raw, trunk_out = mlp.density(position_enc)
    return torch.relu(raw), mlp.color_logits(trunk_out, direction_enc)


def view_directions(ray_samples: RaySamples) -> Tensor:
    """The world viewing direction of each sample: a model that warps rays (NDC) passes it along in the ray
    metadata, since the frustums then hold warped directions."""
    return (ray_samples.metadata or {}).get("view_directions", ray_samples.frustums.directions)
