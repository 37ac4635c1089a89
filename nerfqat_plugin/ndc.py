"""Normalized device coordinates (NDC) for forward-facing scenes.

A pinhole camera that looks down -z maps the half-space beyond the plane ``z = -near`` into the cube [-1, 1]^3:

    x_ndc = -sx * x / z,   y_ndc = -sy * y / z,   z_ndc = 1 + 2 * near / z,   sx = 2 fx / W,  sy = 2 fy / H

so the near plane lands on z_ndc = -1 and infinite depth on z_ndc = +1. The map is projective, so straight rays
stay straight: a world ray becomes the segment ``o_ndc + s * d_ndc``, s in [0, 1], and s grows linearly with
inverse depth (s = 1 - near / depth). Sampling s uniformly therefore samples the scene linearly in disparity.

Whether a scene is rendered in NDC is decided here alone (``ndc_space``): the model's collider, sampler spacing,
density scale and export metadata, the viewer's start camera and nerfacto-qat's refusal all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

NDCMode = Literal["auto", "on", "off"]
"""A model's choice: 'auto' follows the dataparser (llff-data's --ndc flag), 'on' needs its NDC parameters."""


@dataclass(frozen=True)
class NDCSpace:
    """The NDC space of a forward-facing scene: the pinhole camera that defines it (the first training camera at the
    resolution read, in pixels) and the depth of the plane that becomes z_ndc = -1."""

    focal_x: float
    focal_y: float
    width: float
    height: float
    near: float = 1.0

    def warp(self, origins: Tensor, directions: Tensor) -> Tuple[Tensor, Tensor]:
        """``ndc_rays`` in this space."""
        return ndc_rays(origins, directions, self.focal_x, self.focal_y, self.width, self.height, self.near)


def ndc_space(mode: NDCMode, metadata: Mapping[str, object]) -> Optional[NDCSpace]:
    """The NDC space rays are rendered in, or None for world space: the one place that decides it. 'auto' takes NDC
    where the dataparser asks for it (``metadata['ndc']``, llff-data's --ndc), 'on' wherever it gives the space
    (``metadata['ndc_params']``), 'off' never."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"NDC mode must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off" or (mode == "auto" and not metadata.get("ndc")):
        return None
    p = metadata.get("ndc_params")
    if not isinstance(p, Mapping):
        raise ValueError("--pipeline.model.ndc on needs NDC parameters from the dataparser: use llff-data")
    return NDCSpace(
        float(p["focal_x"]), float(p["focal_y"]), float(p["width"]), float(p["height"]), float(p["near_plane"])
    )


def ndc_rays(
    origins: Float[Tensor, "*batch 3"],
    directions: Float[Tensor, "*batch 3"],
    focal_x: float,
    focal_y: float,
    width: float,
    height: float,
    near: float = 1.0,
    eps: float = 1e-9,
) -> Tuple[Float[Tensor, "*batch 3"], Float[Tensor, "*batch 3"]]:
    """Warp world rays (camera frame: x right, y up, looking down -z) to NDC rays.

    Each origin is first slid along its ray onto the plane ``z = -near``; the returned direction is *not* unit
    length: ``o_ndc + 1 * d_ndc`` is the point at infinite depth (z_ndc = 1), ``o_ndc`` is on z_ndc = -1.
    Rays must point into the scene (d_z < 0); a direction with d_z == 0 is nudged to ``-eps`` to stay finite.
    The result does not depend on the length of ``directions``.

    Args:
        origins: ray origins.
        directions: ray directions (any length).
        focal_x: horizontal focal length in pixels of the camera that defines the NDC space.
        focal_y: vertical focal length in pixels.
        width: image width in pixels of that camera.
        height: image height in pixels.
        near: depth of the plane that becomes z_ndc = -1 (1.0 in NeRF's LLFF setup).
        eps: smallest |d_z| used in the division.

    Returns:
        NDC origins and NDC directions.
    """
    if near <= 0:
        raise ValueError(f"NDC near plane must be positive, got {near}")
    dx, dy, dz = directions.unbind(-1)
    dz = torch.where(dz.abs() < eps, torch.full_like(dz, -eps), dz)
    # slide the origin to z = -near: o + t0 * d with t0 = -(near + o_z) / d_z
    t0 = -(near + origins[..., 2]) / dz
    ox = origins[..., 0] + t0 * dx
    oy = origins[..., 1] + t0 * dy
    sx = 2.0 * focal_x / width
    sy = 2.0 * focal_y / height
    # on that plane z = -near exactly, so -x/z = x/near and 1 + 2 near/z = -1
    o_ndc = torch.stack([sx * ox / near, sy * oy / near, torch.full_like(ox, -1.0)], dim=-1)
    d_ndc = torch.stack(
        [-sx * (dx / dz + ox / near), -sy * (dy / dz + oy / near), torch.full_like(ox, 2.0)],
        dim=-1,
    )
    return o_ndc, d_ndc


def ndc_points(
    points: Float[Tensor, "*batch 3"], focal_x: float, focal_y: float, width: float, height: float, near: float = 1.0
) -> Float[Tensor, "*batch 3"]:
    """Project world points with z < 0 straight into NDC (the map ``ndc_rays`` applies to whole rays)."""
    x, y, z = points.unbind(-1)
    return torch.stack([-2.0 * focal_x / width * x / z, -2.0 * focal_y / height * y / z, 1.0 + 2.0 * near / z], dim=-1)
