"""nerfstudio's multiresolution hash encoding with its tables fake-quantized per level (``quant.table``).

The encoding is nerfstudio's ``HashEncoding`` (its levels, resolutions and hash function, PyTorch implementation);
only the tables differ: one ``QuantTable`` whose groups are the levels, so each level's features are ``bits``-bit
codes with a learned step of their own, and each step quantizes only the corners it gathers. With quantization
off the features are nerfstudio's, value for value.
"""

from __future__ import annotations

from typing import Dict, List

import torch
from jaxtyping import Float
from nerfstudio.field_components.encodings import HashEncoding
from torch import Tensor

from nerfqat_plugin.quant.table import QuantTable

CORNERS = ("ccc", "cfc", "ffc", "fcc", "ccf", "cff", "fff", "fcf")
"""The eight cell corners per axis (c: ceil, f: floor) in the order nerfstudio gathers and interpolates them."""
HASH_PRIMES = (1, 2654435761, 805459861)
"""What nerfstudio's ``hash_fn`` multiplies a corner's x, y, z by before it XORs them (int64)."""
REACHABLE_CORNER_LIMIT = 1 << 21
"""A level with at most this many grid corners ((resolution + 1)^3) has its reachable rows enumerated; every row
of a finer level counts as reachable."""


class QuantHashEncoding(HashEncoding):
    """``HashEncoding`` (``implementation="torch"``) over a ``QuantTable`` of ``bits``-bit codes per level."""

    def __init__(
        self,
        num_levels: int = 16,
        min_res: int = 16,
        max_res: int = 1024,
        log2_hashmap_size: int = 19,
        features_per_level: int = 2,
        hash_init_scale: float = 0.001,
        bits: int = 8,
    ) -> None:
        super().__init__(
            num_levels=num_levels,
            min_res=min_res,
            max_res=max_res,
            log2_hashmap_size=log2_hashmap_size,
            features_per_level=features_per_level,
            hash_init_scale=hash_init_scale,
            implementation="torch",
        )
        init = self.hash_table.detach()
        del self.hash_table  # the table lives in self.table
        self.table = QuantTable(num_levels, self.hash_table_size, features_per_level, bits, init)
        self._reachable: Dict[int, Tensor] = {}  # corner limit -> reachable_rows (fixed by the level resolutions)

    def reachable_rows(self, corner_limit: int = REACHABLE_CORNER_LIMIT) -> Tensor:
        """Sorted int64 indices of the rows of ``table`` (level * rows_per_level + hash) that a point in [0, 1]^3 can
        gather: at level l the corners (x, y, z), 0 <= x, y, z <= scalings[l], hashed as ``hash_fn`` hashes them; all
        rows of a level with more than ``corner_limit`` corners. nerfstudio's nerfacto field and proposal
        networks pass positions in [0, 1)^3 (they set the others to 0 first), so no other row is ever read (nor
        trained)."""
        if corner_limit in self._reachable:
            return self._reachable[corner_limit]
        rows_per_level = self.hash_table_size
        rows: List[Tensor] = []
        for level, resolution in enumerate(self.scalings.tolist()):
            n = int(resolution) + 1
            if n**3 > corner_limit:
                rows.append(torch.arange(rows_per_level, dtype=torch.int64) + level * rows_per_level)
                continue
            i = torch.arange(n, dtype=torch.int64)
            x, y, z = (i * p for p in HASH_PRIMES)
            hashed = (x[:, None, None] ^ y[None, :, None]) ^ z[None, None, :]
            rows.append(torch.unique(hashed.reshape(-1) % rows_per_level) + level * rows_per_level)
        self._reachable[corner_limit] = torch.cat(rows)
        return self._reachable[corner_limit]

    def corner_rows(self, scaled: Tensor) -> List[Tensor]:
        """Table rows [..., L] of the eight corners of each point's cell, in ``CORNERS`` order, for points scaled to
        each level's grid (``scaled`` [..., L, 3]): the rows nerfstudio's ``hash_fn`` gives, corner by corner.

        The hash is separable (x, y and z are multiplied by their primes apart, then XORed), so each axis is
        multiplied once at its floor and once at its ceiling and each pair of x and y ends XORed once, where
        nerfstudio gathers and multiplies every corner's three coordinates anew; integers, so the rows are equal."""
        ends = (torch.ceil(scaled).long(), torch.floor(scaled).long())
        axes = [
            {"c": ends[0][..., axis] * prime, "f": ends[1][..., axis] * prime} for axis, prime in enumerate(HASH_PRIMES)
        ]
        offset = self.hash_offset.to(scaled.device)
        pairs: Dict[str, Tensor] = {}
        rows = []
        for corner in CORNERS:
            xy = pairs.get(corner[:2])
            if xy is None:
                xy = pairs[corner[:2]] = axes[0][corner[0]] ^ axes[1][corner[1]]
            hashed = xy ^ axes[2][corner[2]]
            rows.append(hashed.remainder_(self.hash_table_size).add_(offset))
        return rows

    def pytorch_fwd(self, in_tensor: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out"]:
        """nerfstudio's trilinear interpolation of the eight corners of each point's cell (``corner_rows``), each
        read through the table; the same products and sums as nerfstudio's, in its order."""
        if in_tensor.shape[-1] != 3:
            raise ValueError(f"hash encoding of points [..., 3], got shape {tuple(in_tensor.shape)}")
        scaled = in_tensor[..., None, :] * self.scalings.view(-1, 1).to(in_tensor.device)  # [..., L, 3]
        offset = scaled - torch.floor(scaled).type(torch.int32)
        f = [self.table(rows) for rows in self.corner_rows(scaled)]  # 8 x [..., L, features]
        ox, oy, oz = offset[..., 0:1], offset[..., 1:2], offset[..., 2:3]
        f03 = f[0] * ox + f[3] * (1 - ox)
        f12 = f[1] * ox + f[2] * (1 - ox)
        f56 = f[5] * ox + f[6] * (1 - ox)
        f47 = f[4] * ox + f[7] * (1 - ox)
        f0312 = f03 * oy + f12 * (1 - oy)
        f4756 = f47 * oy + f56 * (1 - oy)
        encoded = f0312 * oz + f4756 * (1 - oz)  # [..., L, features]
        return torch.flatten(encoded, start_dim=-2, end_dim=-1)
