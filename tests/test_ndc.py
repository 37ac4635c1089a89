"""NDC ray warp on hand-computed rays, and how the nerf-qat model uses it."""

from __future__ import annotations

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.ray_samplers import LinearDisparitySampler, UniformSampler
from nerfstudio.model_components.scene_colliders import NearFarCollider

from nerfqat_plugin.ndc import NDCSpace, ndc_points, ndc_rays, ndc_space
from nerfqat_plugin.nerf.colliders import AxisDepthCollider, NDCCollider
from nerfqat_plugin.nerf.model import NeRFQATModelConfig

# a 100 x 50 camera with focal 50: sx = 2 * 50 / 100 = 1, sy = 2 * 50 / 50 = 2
CAM = dict(focal_x=50.0, focal_y=50.0, width=100.0, height=50.0)


def test_hand_worked_ray():
    # o = (1, 2, 0), d = (1, 0, -1): slides to o' = o + 1 * d = (2, 2, -1) on the near plane z = -1
    # o_ndc = (sx * 2 / 1, sy * 2 / 1, -1) = (2, 4, -1)
    # d_ndc = (-sx * (1 / -1 + 2 / 1), -sy * (0 / -1 + 2 / 1), 2) = (-1, -4, 2)
    o, d = ndc_rays(torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[1.0, 0.0, -1.0]]), **CAM, near=1.0)
    torch.testing.assert_close(o, torch.tensor([[2.0, 4.0, -1.0]]))
    torch.testing.assert_close(d, torch.tensor([[-1.0, -4.0, 2.0]]))
    # the world point o + 2 d = (3, 2, -2) has depth 2, so s = 1 - near / depth = 0.5:
    # direct projection (-sx * 3 / -2, -sy * 2 / -2, 1 + 2 / -2) = (1.5, 2, 0) = o_ndc + 0.5 d_ndc
    p = ndc_points(torch.tensor([[3.0, 2.0, -2.0]]), **CAM, near=1.0)
    torch.testing.assert_close(p, torch.tensor([[1.5, 2.0, 0.0]]))
    torch.testing.assert_close(o + 0.5 * d, p)


def test_ray_through_camera_axis():
    o, d = ndc_rays(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, -1.0]]), **CAM)
    torch.testing.assert_close(o, torch.tensor([[0.0, 0.0, -1.0]]))
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.0, 2.0]]))


def _random_rays(n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    origins = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 0.3
    dirs = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 0.3
    dirs[:, 2] = -1.0
    return origins, dirs / dirs.norm(dim=-1, keepdim=True)


def test_points_on_a_ray_stay_on_the_warped_line_and_keep_their_order():
    near = 1.5
    origins, dirs = _random_rays()
    o_ndc, d_ndc = ndc_rays(origins, dirs, **CAM, near=near)
    # world points from the near plane out to 1000x the near depth, in increasing distance along each ray
    depths = near * torch.tensor([1.0, 1.1, 2.0, 5.0, 50.0, 1000.0], dtype=torch.float64)
    t = (depths[None, :] + origins[:, 2:3]) / -dirs[:, 2:3]  # distance at which each ray reaches each depth
    points = origins[:, None, :] + t[..., None] * dirs[:, None, :]
    projected = ndc_points(points, **CAM, near=near)
    s = 1.0 - near / depths  # where along the NDC segment each depth should land
    torch.testing.assert_close(projected, o_ndc[:, None, :] + s[None, :, None] * d_ndc[:, None, :])
    assert (projected[..., 2].diff(dim=-1) > 0).all()  # farther in the world is farther in NDC


def test_near_plane_and_infinity():
    origins, dirs = _random_rays()
    o_ndc, d_ndc = ndc_rays(origins, dirs, **CAM, near=2.0)
    torch.testing.assert_close(o_ndc[:, 2], torch.full((64,), -1.0, dtype=torch.float64))
    torch.testing.assert_close((o_ndc + d_ndc)[:, 2], torch.ones(64, dtype=torch.float64))
    on_near_plane = torch.tensor([[0.3, -0.2, -2.0]])
    assert ndc_points(on_near_plane, **CAM, near=2.0)[0, 2].item() == pytest.approx(-1.0)


def test_origin_in_front_of_or_behind_the_near_plane_gives_the_same_ray():
    d = torch.tensor([[0.2, -0.1, -1.0]])
    start = torch.tensor([[0.1, 0.3, 0.0]])
    a = ndc_rays(start, d, **CAM)
    b = ndc_rays(start + 4.0 * d, d, **CAM)  # origin already beyond the near plane
    c = ndc_rays(start - 3.0 * d, d, **CAM)  # origin behind the camera
    for other in (b, c):
        torch.testing.assert_close(other[0], a[0])
        torch.testing.assert_close(other[1], a[1])


def test_direction_length_does_not_matter():
    origins, dirs = _random_rays(8)
    a = ndc_rays(origins, dirs, **CAM)
    b = ndc_rays(origins, 3.0 * dirs, **CAM)
    torch.testing.assert_close(a, b)


def test_non_positive_near_is_refused():
    with pytest.raises(ValueError, match="near plane must be positive"):
        ndc_rays(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, -1.0]]), **CAM, near=0.0)


# --- the model ---------------------------------------------------------------------------------------------------

LLFF_METADATA = {
    "near_plane": 1.2,
    "far_plane": 6.0,
    "ndc": True,
    "ndc_params": {"focal_x": 50.0, "focal_y": 50.0, "width": 100.0, "height": 50.0, "near_plane": 1.0},
}


def _model(metadata=None, **overrides):
    cfg = NeRFQATModelConfig(
        num_layers=2,
        layer_width=16,
        skip_layer=1,
        view_width=8,
        num_coarse_samples=8,
        num_importance_samples=8,
        encoding_implementation="torch",
        **overrides,
    )
    box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    kwargs = {} if metadata is None else {"metadata": metadata}
    return cfg.setup(scene_box=box, num_train_data=4, **kwargs)


def _bundle(n: int = 5) -> RayBundle:
    origins, dirs = _random_rays(n)
    norm = torch.full((n, 1), 1.25)
    return RayBundle(
        origins=origins.float(),
        directions=dirs.float(),
        pixel_area=torch.ones(n, 1),
        camera_indices=torch.zeros(n, 1, dtype=torch.long),
        metadata={"directions_norm": norm},
    )


def test_auto_ndc_warps_rays_to_the_unit_segment():
    model = _model(LLFF_METADATA).eval()
    assert isinstance(model.collider, NDCCollider)
    bundle = model.collider(_bundle())
    torch.testing.assert_close(bundle.nears, torch.zeros(5, 1))
    torch.testing.assert_close(bundle.fars, torch.ones(5, 1))
    torch.testing.assert_close(bundle.origins[:, 2], torch.full((5,), -1.0))
    assert "view_directions" in bundle.metadata
    outputs = model(_bundle())
    assert ((outputs["depth"] >= 0) & (outputs["depth"] <= 1)).all()
    assert (model.collider.near_plane, model.collider.far_plane) == (0.0, 1.0)


def test_ndc_off_uses_the_dataparser_bounds_as_depths():
    model = _model(LLFF_METADATA, ndc="off", lindisp=True).eval()
    assert isinstance(model.collider, AxisDepthCollider)
    assert isinstance(model.sampler_uniform, LinearDisparitySampler)
    bundle = model.collider(_bundle())
    # depth bounds 1.2 and 6.0 along rays whose camera-frame direction (z = -1) has length 1.25
    torch.testing.assert_close(bundle.nears, torch.full((5, 1), 1.5))
    torch.testing.assert_close(bundle.fars, torch.full((5, 1), 7.5))
    outputs = model(_bundle())
    assert torch.isfinite(outputs["rgb"]).all()


def test_without_metadata_the_collider_decides():
    model = _model().eval()
    assert type(model.collider) is NearFarCollider  # nerfstudio's, from collider_params
    assert isinstance(model.sampler_uniform, UniformSampler)
    bundle = _bundle()
    assert model.collider(bundle) is bundle
    torch.testing.assert_close(bundle.nears, torch.full((5, 1), 2.0))  # kept at inference (eval mode)
    assert (model.collider.near_plane, model.collider.far_plane) == (2.0, 6.0)


def test_the_one_ndc_decision_follows_the_dataparser_unless_the_model_overrides_it():
    space = NDCSpace(50.0, 50.0, 100.0, 50.0, 1.0)
    assert ndc_space("auto", LLFF_METADATA) == space
    assert ndc_space("auto", {**LLFF_METADATA, "ndc": False}) is None  # llff-data --ndc False
    assert ndc_space("on", {**LLFF_METADATA, "ndc": False}) == space
    assert ndc_space("off", LLFF_METADATA) is None
    assert ndc_space("auto", {}) is None  # Blender and other dataparsers: world space
    with pytest.raises(ValueError, match="'auto', 'on' or 'off', got 'yes'"):
        ndc_space("yes", LLFF_METADATA)  # type: ignore[arg-type]
    model = _model(LLFF_METADATA)
    assert model.ndc == space and model.render_settings()["rays"] == {"kind": "ndc", **CAM, "near": 1.0}


def test_nerfacto_qat_refuses_a_scene_in_ndc_naming_the_setting():
    from nerfqat_plugin.nerfacto.model import NerfactoQATModelConfig

    box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    config = NerfactoQATModelConfig(implementation="torch")
    with pytest.raises(ValueError, match="llff-data --ndc False"):
        config.setup(scene_box=box, num_train_data=4, metadata=LLFF_METADATA)


def test_ndc_on_without_parameters_is_refused():
    with pytest.raises(ValueError, match="use llff-data"):
        _model(ndc="on")
