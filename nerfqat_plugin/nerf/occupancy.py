"""Empty-space skipping: an occupancy grid over the scene box, trained from the network's own density, and the
marcher that evaluates the network only where the grid is occupied and only until a ray is opaque.

The grid covers the dataparser's scene box (llff-data with ``--ndc``: the NDC box) with ``resolution`` cells per
axis. Each update evaluates the field's density (as it computes it then: fake-quantized under QAT) at one random
point in every cell (a random quarter of them after the warm-up), keeps ``max(decay * old, new)`` of
``density * step`` per cell, and marks a cell occupied while that value exceeds the threshold (or the grid's mean,
if lower). Samples outside the box are empty. The random points come from a generator seeded with the step, so
every process of a data-parallel run computes the same grid.

Rays are sampled as the hierarchical sampler's coarse pass does (``samples`` bins between near and far, jittered
while training); a sample is evaluated when its cell is occupied and the ray's transmittance in front of it is
still above ``early_stop``. The samples that are evaluated go through the MLP packed (no padding); the others have
zero density, so the image is composited by nerfstudio's renderers exactly as a dense uniform render would be: with
every cell occupied and ``early_stop`` 0 it is that render, value for value.
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Tuple

import numpy as np
import torch
from torch import Tensor, nn

DENSITY_CHUNK = 65536
"""Grid points per density evaluation in an update."""


@dataclass
class OccupancyConfig:
    """The occupancy grid and the sampler that skips what it marks empty."""

    samples: int = 192
    """Evenly spaced bins per ray between near and far (in disparity with --pipeline.model.lindisp); only those in
    occupied cells, in front of the point where the ray turns opaque, are evaluated."""
    resolution: int = 64
    """Cells along each axis of the grid over the scene box (the NDC box for forward-facing scenes)."""
    threshold: float = 0.01
    """A cell is occupied while density x step (the box's mean side / samples) there exceeds this, or the grid's
    mean value where that is lower."""
    decay: float = 0.95
    """Each update keeps max(decay x old value, new value) per updated cell."""
    update_every: int = 16
    """Training steps between grid updates (the first at step 0)."""
    warmup_steps: int = 256
    """Before this step every update evaluates every cell; after it, a random quarter of them."""
    early_stop: float = 1e-4
    """A ray stops once its transmittance falls below this (0: never). Training finds where with a density pass
    without gradients, then evaluates the network with gradients on the samples in front of it, as long as that
    pays: the batch after each grid update measures it (model.STOPPING_PAYS)."""
    segment: int = 16
    """Bins a ray advances between transmittance checks (rendering and the training pre-pass)."""


class OccupancyGrid(nn.Module):
    """A ``resolution``^3 occupancy bitfield over an axis-aligned box, with the values it is thresholded from."""

    def __init__(self, aabb: Tensor, config: OccupancyConfig) -> None:
        super().__init__()
        self.config = config
        r = config.resolution
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        if r < 1 or not bool((aabb[1] > aabb[0]).all()):
            raise ValueError(f"occupancy grid: resolution {r} must be >= 1 and the box {aabb.tolist()} not empty")
        self.register_buffer("aabb", aabb.clone())
        self.register_buffer("values", torch.zeros(r, r, r))
        # before the first update every cell is occupied: nothing is skipped
        self.register_buffer("bits", torch.ones(r, r, r, dtype=torch.bool))

    @property
    def resolution(self) -> int:
        return int(self.bits.shape[0])

    @property
    def step(self) -> float:
        """The length a cell's density is multiplied by: the box's mean side over the samples per ray."""
        return float((self.aabb[1] - self.aabb[0]).mean()) / self.config.samples

    def _padded(self, positions: Tensor) -> Tensor:
        """Cells of points [..., 3] in the grid with a border of one empty cell: ``floor((p - lo) / (hi - lo) * r)``
        per axis clamped to [-1, r] (NaN to -1), plus 1; int32 [..., 3] in [0, r + 1]."""
        lo, hi = self.aabb[0], self.aabb[1]
        ijk = torch.floor((positions - lo) / (hi - lo) * self.resolution)
        return torch.nan_to_num_(ijk, nan=-1.0).clamp_(-1, self.resolution).to(torch.int32) + 1

    def cells(self, positions: Tensor) -> Tuple[Tensor, Tensor]:
        """``(flat cell index, inside the box)`` of points [..., 3]: cell ``floor((p - lo) / (hi - lo) * r)`` per
        axis, flat index ``(i * r + j) * r + k``; points outside get index 0 and ``inside`` False."""
        r = self.resolution
        ijk = self._padded(positions)
        inside = ((ijk >= 1) & (ijk <= r)).all(dim=-1)
        ijk = torch.where(inside[..., None], ijk - 1, torch.zeros_like(ijk)).long()
        return (ijk[..., 0] * r + ijk[..., 1]) * r + ijk[..., 2], inside

    def occupied(self, positions: Tensor) -> Tensor:
        """Whether each point [..., 3] lies in an occupied cell: one lookup in the bitfield with an empty border
        (points outside the box land there), which takes half the time of ``cells`` and a lookup."""
        r = self.resolution
        padded = self.bits.new_zeros(r + 2, r + 2, r + 2)
        padded[1:-1, 1:-1, 1:-1] = self.bits
        ijk = self._padded(positions)
        return padded.reshape(-1)[(ijk[..., 0] * (r + 2) + ijk[..., 1]) * (r + 2) + ijk[..., 2]]

    @torch.no_grad()
    def update(self, density: Callable[[Tensor], Tensor], step: int) -> None:
        """One update at training step ``step`` from ``density`` (points [n, 3] -> density [n] or [n, 1])."""
        cfg, r = self.config, self.resolution
        n = r**3
        generator = torch.Generator().manual_seed(int(step))
        if step < cfg.warmup_steps:
            cells = torch.arange(n)
        else:
            cells = torch.randperm(n, generator=generator)[: max(n // 4, 1)]
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1).float()
        jitter = torch.rand(cells.shape[0], 3, generator=generator)
        device = self.aabb.device
        lo, hi = self.aabb[0], self.aabb[1]
        points = lo + (ijk.to(device) + jitter.to(device)) * ((hi - lo) / r)
        sigma = torch.cat([density(p).reshape(-1) for p in points.split(DENSITY_CHUNK)])
        values = self.values.reshape(-1)
        cells = cells.to(device)
        values[cells] = torch.maximum(values[cells] * cfg.decay, sigma.float() * self.step)
        threshold = torch.clamp(values.mean(), max=cfg.threshold)
        self.bits.copy_(self.values > threshold)

    def occupied_fraction(self) -> float:
        return float(self.bits.float().mean())

    # --- the export's bitfield ----------------------------------------------------------------------------------

    def packed(self) -> Tensor:
        """The bitfield as the export stores it: cells in flat-index order, 8 to a byte, least significant bit
        first, zlib-compressed (level 9); uint8 [bytes]."""
        bits = np.packbits(self.bits.reshape(-1).cpu().numpy(), bitorder="little")
        return torch.frombuffer(bytearray(zlib.compress(bits.tobytes(), 9)), dtype=torch.uint8)

    def load_packed(self, data: Tensor, where: str) -> None:
        """Set the bitfield from ``packed()`` bytes (``where`` names the file for errors); values are not stored."""
        n = self.resolution**3
        try:
            raw = zlib.decompress(data.cpu().numpy().tobytes())
        except zlib.error as err:
            raise ValueError(f"{where}: occupancy grid bits are not zlib data ({err})") from None
        if len(raw) != (n + 7) // 8:
            raise ValueError(f"{where}: occupancy grid has {len(raw)} bytes, a {self.resolution}^3 grid needs {n}")
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n, bitorder="little")
        self.bits.copy_(torch.from_numpy(bits.astype(bool)).reshape(self.bits.shape))
        self.values.copy_(self.bits.float())


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode (no density noise, activation observers still) and without gradients, then back."""
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was)


def march(
    keep: Tensor,
    deltas: Tensor,
    evaluate: Callable[[Tensor, slice], Dict[str, Tensor]],
    channels: Dict[str, int],
    early_stop: float,
    segment: int,
) -> Tuple[Dict[str, Tensor], Tensor]:
    """Evaluate a [rays, bins] grid of samples front to back, ``segment`` bins at a time, only where ``keep`` and
    the ray's transmittance in front of the segment is at least ``early_stop``.

    ``evaluate(mask, columns)`` gets the [rays, columns] mask of the samples to evaluate in those bins and returns
    their outputs, packed ([n, c] for each name in ``channels``, which gives c; "density" among them); ``deltas``
    [rays, bins] are the lengths the densities are multiplied by. Returns the dense [rays, bins, c] outputs (zero
    where not evaluated) and the [rays, bins] mask of the evaluated samples."""
    rays, bins = keep.shape
    dense = {name: deltas.new_zeros(rays, bins, c) for name, c in channels.items()}
    evaluated = torch.zeros_like(keep)
    optical = torch.zeros(rays, device=keep.device)
    alive = torch.ones(rays, dtype=torch.bool, device=keep.device)
    for start in range(0, bins, max(segment, 1)):
        columns = slice(start, min(start + max(segment, 1), bins))
        mask = keep[:, columns] & alive[:, None]
        evaluated[:, columns] = mask
        if bool(mask.any()):
            for name, value in evaluate(mask, columns).items():
                dense[name][:, columns][mask] = value.to(dense[name].dtype)
        if early_stop > 0:
            optical = optical + (deltas[:, columns] * dense["density"][:, columns, 0]).sum(dim=1)
            alive = alive & (torch.exp(-optical) >= early_stop)
            if not bool(alive.any()):
                break
    return dense, evaluated
