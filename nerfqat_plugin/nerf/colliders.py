"""Where rays start and end: one collider per model, chosen once from the scene's NDC space (``ndc.ndc_space``) and
the dataparser's metadata.

- ``NDCCollider``: forward-facing scenes (llff-data with ``--ndc``): warps rays to normalized device coordinates,
  where every ray runs from 0 to 1, and keeps the world viewing direction for the color branch.
- ``AxisDepthCollider``: llff-data without NDC: the scene's near/far bounds are depths along the camera axis, so
  each ray's range is stretched by the length of its camera-frame direction.
- nerfstudio's ``NearFarCollider`` otherwise (``--pipeline.model.collider-params``), keeping its near plane
  outside training too (nerfstudio's default moves it to 0 at inference).
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.scene_colliders import NearFarCollider, SceneCollider

from nerfqat_plugin.ndc import NDCSpace


class NDCCollider(SceneCollider):
    """Warps rays into NDC (nears 0, fars 1); the world direction travels on as ``metadata['view_directions']``."""

    near_plane = 0.0
    far_plane = 1.0

    def __init__(self, space: NDCSpace) -> None:
        super().__init__()
        self.space = space

    def forward(self, ray_bundle: RayBundle) -> RayBundle:  # always warps, whatever nears and fars it came with
        origins, directions = self.space.warp(ray_bundle.origins, ray_bundle.directions)
        ones = torch.ones_like(origins[..., :1])
        return RayBundle(
            origins=origins,
            directions=directions,
            pixel_area=ray_bundle.pixel_area,
            camera_indices=ray_bundle.camera_indices,
            nears=torch.zeros_like(ones),
            fars=ones,
            # the color branch still sees the world viewing direction, as in the original NeRF
            metadata={**ray_bundle.metadata, "view_directions": ray_bundle.directions},
            times=ray_bundle.times,
        )


class AxisDepthCollider(NearFarCollider):
    """Near and far measured as depth along the camera's viewing axis (LLFF depth bounds), in and out of training."""

    def __init__(self, near_plane: float, far_plane: float) -> None:
        if not 0 <= near_plane < far_plane:
            raise ValueError(f"near/far planes ({near_plane}, {far_plane}) must satisfy 0 <= near < far")
        super().__init__(near_plane, far_plane, reset_near_plane=False)

    def forward(self, ray_bundle: RayBundle) -> RayBundle:
        # unit directions: a ray reaches depth z at distance z * |camera-frame direction with z = -1|
        stretch = ray_bundle.metadata.get("directions_norm")
        if stretch is None:
            stretch = torch.ones_like(ray_bundle.origins[..., :1])
        ray_bundle.nears = self.near_plane * stretch
        ray_bundle.fars = self.far_plane * stretch
        return ray_bundle


def scene_collider(
    ndc: Optional[NDCSpace], metadata: Mapping[str, object], collider_params: Optional[Dict[str, float]]
) -> SceneCollider:
    """The collider of a model: NDC in the scene's NDC space if it has one, else the dataparser's near/far depths
    when it gives them, else ``collider_params``."""
    if ndc is not None:
        return NDCCollider(ndc)
    if "near_plane" in metadata and "far_plane" in metadata:
        return AxisDepthCollider(float(metadata["near_plane"]), float(metadata["far_plane"]))  # type: ignore[arg-type]
    if collider_params is None:
        raise ValueError("no near/far for the rays: set --pipeline.model.collider-params near_plane N far_plane F")
    return NearFarCollider(collider_params["near_plane"], collider_params["far_plane"], reset_near_plane=False)
