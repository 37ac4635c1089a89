"""The occupancy sampler: packed marching against a dense reference, the grid update under QAT, the grid in the
export (bit for bit) and the int8 export against its fake-quantized run with the same grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.field_heads import FieldHeadNames

from nerfqat_plugin.nerf.model import NeRFQATModel, NeRFQATModelConfig
from nerfqat_plugin.nerf.occupancy import OccupancyConfig, OccupancyGrid
from nerfqat_plugin.quant import QuantConfig
from nerfqat_plugin.quant.layers import ActQuantizer
from tests.conftest import load_file

BOX = torch.tensor([[-3.0] * 3, [3.0] * 3])
"""The scene box of the models here: every sample of ``_rays`` lies inside it."""


def _model(quant_start_step: int = 0, density_bias: float = 1.0, **occupancy) -> NeRFQATModel:
    """A narrow occupancy-sampled model whose density head starts at ``density_bias`` (a fresh one's density is zero
    nearly everywhere, which would make the comparisons below trivial)."""
    config = NeRFQATModelConfig(
        num_layers=2, layer_width=16, skip_layer=1, view_width=8, sampler="occupancy",
        occupancy=OccupancyConfig(**{"samples": 24, "resolution": 8, **occupancy}),
        quant=QuantConfig(quant_start_step=quant_start_step), collider_params={"near_plane": 0.5, "far_plane": 3.5},
        quant_compile=False,
    )  # fmt: skip
    model = NeRFQATModel(config, scene_box=SceneBox(BOX), num_train_data=1)
    with torch.no_grad():
        model.field_fine.mlp.density_head.bias.fill_(density_bias)
    return model


def _rays(n: int = 40) -> RayBundle:
    g = torch.Generator().manual_seed(1)
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0, 0, 1.0]), dim=-1)
    return RayBundle(
        origins=torch.tensor([0.0, 0.0, -2.0]).expand(n, 3).clone(),
        directions=directions,
        pixel_area=torch.ones(n, 1),
        camera_indices=torch.zeros(n, 1, dtype=torch.long),
    )


def _dense_reference(model: NeRFQATModel, rays: RayBundle, cell_mask=None):
    """Uniform samples through the whole field (no packing, no grid), density and colour zeroed where
    ``cell_mask(positions)`` is False, composited by the model's renderers."""
    samples = model.sampler_uniform(rays)
    out = model.field_fine(samples)
    density, rgb = out[FieldHeadNames.DENSITY], out[FieldHeadNames.RGB]
    if cell_mask is not None:
        keep = cell_mask(samples.frustums.get_positions())[..., None]
        density, rgb = density * keep, rgb * keep
    rendered, _ = model._composite(samples, density, rgb)
    return rendered


@pytest.mark.parametrize("grad", [False, True], ids=["render", "training"])
def test_packed_marching_over_a_full_grid_without_early_stop_is_the_dense_uniform_render(grad: bool):
    torch.manual_seed(0)
    model = _model(early_stop=0.0, segment=5)
    model.train(grad)
    rays = model.collider(_rays())
    with torch.set_grad_enabled(grad):
        torch.manual_seed(3)  # the same stratified jitter for both
        packed = model.get_outputs(rays)
        torch.manual_seed(3)
        dense = _dense_reference(model, rays)
    for key in ("accumulation", "depth"):  # from the densities alone: bit for bit
        assert torch.equal(packed[key], dense[key]), key
    # the colour may differ in the last bit: PyTorch's CPU sigmoid computes a tensor's tail (what is left over after
    # its vector registers are filled) in scalar code, and packing moves samples between the two
    torch.testing.assert_close(packed["rgb"], dense["rgb"], rtol=0, atol=2.5e-7)
    assert bool((packed["mlp_samples"] == 24).all())
    if grad:
        weight = model.field_fine.mlp.trunk[0].weight
        (g_packed,) = torch.autograd.grad(packed["rgb"].square().sum(), weight)
        (g_dense,) = torch.autograd.grad(dense["rgb"].square().sum(), weight)
        torch.testing.assert_close(g_packed, g_dense, rtol=1e-5, atol=1e-7)


def test_samples_in_empty_cells_are_skipped_and_contribute_nothing():
    torch.manual_seed(0)
    model = _model(early_stop=0.0)
    model.eval()
    g = torch.Generator().manual_seed(2)
    model.grid.bits.copy_(torch.rand(model.grid.bits.shape, generator=g) < 0.3)
    rays = model.collider(_rays())
    with torch.no_grad():
        packed = model.get_outputs(rays)
        dense = _dense_reference(model, rays, model.grid.occupied)
    for key in ("accumulation", "depth"):
        assert torch.equal(packed[key], dense[key]), key
    torch.testing.assert_close(packed["rgb"], dense["rgb"], rtol=0, atol=2.5e-7)  # sigmoid's tail: see above
    evaluated = float(packed["mlp_samples"].mean())
    assert 0 < evaluated < 0.6 * 24, evaluated


def test_rays_stop_once_opaque_and_the_image_barely_changes():
    torch.manual_seed(0)
    model = _model(early_stop=1e-4, segment=4, density_bias=30.0)  # opaque within the first samples
    model.eval()
    with torch.no_grad():
        rays = model.collider(_rays())
        stopped = model.get_outputs(rays)
        model.config.occupancy.early_stop = 0.0
        full = model.get_outputs(rays)
    assert float(stopped["mlp_samples"].max()) < float(full["mlp_samples"].min()) / 2
    torch.testing.assert_close(stopped["rgb"], full["rgb"], rtol=0, atol=1e-4)
    torch.testing.assert_close(stopped["accumulation"], full["accumulation"], rtol=0, atol=1e-4)
    assert torch.equal(stopped["depth"], full["depth"])


def test_training_stops_rays_where_a_pass_without_gradients_finds_them_opaque():
    torch.manual_seed(0)
    model = _model(early_stop=1e-4, segment=4, density_bias=30.0)
    model.train()
    out = model.get_outputs(model.collider(_rays()))
    assert float(out["mlp_samples"].max()) == 4  # opaque within the first segment
    out["rgb"].sum().backward()
    assert model.field_fine.mlp.trunk[0].weight.grad.abs().sum() > 0


def test_training_skips_the_stopping_pass_while_it_drops_too_few_samples(monkeypatch):
    torch.manual_seed(0)
    model = _model(early_stop=1e-4, segment=4, density_bias=-5.0)  # transparent: no ray stops
    model.train()
    calls = []
    original = model.field_fine.density_at
    monkeypatch.setattr(model.field_fine, "density_at", lambda p: calls.append(len(p)) or original(p))
    rays = model.collider(_rays())
    model.get_outputs(rays)  # measured: nothing dropped
    measured = len(calls)
    model.get_outputs(rays)
    assert measured > 0 and len(calls) == measured and not model._stopping_pays
    with torch.no_grad():
        model.field_fine.mlp.density_head.bias.fill_(30.0)  # opaque now
    model.update_grid(16)  # the next batch measures again
    calls.clear()
    model.get_outputs(rays)
    assert calls and model._stopping_pays


def test_grid_update_under_qat_reads_the_fake_quantized_density_and_leaves_the_observers_alone(monkeypatch):
    torch.manual_seed(0)
    model = _model(quant_start_step=0, density_bias=0.0, threshold=0.05)
    model.train()
    model.update_to_step(0)
    model.get_outputs(model.collider(_rays()))  # observers see one batch, so the quantizers have ranges
    quantizers = [m for m in model.field_fine.modules() if isinstance(m, ActQuantizer)]
    ranges = [(q.min_val.clone(), q.max_val.clone()) for q in quantizers]
    seen = []
    original = model.field_fine.density_at

    def recording(points):
        seen.append((points, original(points)))
        return seen[-1][1]

    monkeypatch.setattr(model.field_fine, "density_at", recording)
    model.update_grid(0)
    assert model.training and all(q.quant_active for q in quantizers)
    for q, (lo, hi) in zip(quantizers, ranges, strict=True):
        assert torch.equal(q.min_val, lo) and torch.equal(q.max_val, hi)
    points = torch.cat([p for p, _ in seen])
    sigma = torch.cat([s for _, s in seen]).reshape(-1)
    grid = model.grid
    assert points.shape[0] == grid.resolution**3  # warm-up: every cell, one point in each
    index, inside = grid.cells(points)
    assert bool(inside.all()) and torch.equal(index, torch.arange(grid.resolution**3))
    torch.testing.assert_close(grid.values.reshape(-1), sigma * grid.step, rtol=0, atol=0)
    # the density is the fake-quantized network's: the same points in fp32 give other values
    model.field_fine.eval()
    with torch.no_grad():
        for m in model.field_fine.modules():
            if hasattr(m, "quant_active"):
                m.quant_active = False
        fp32 = model.field_fine.density_at(points).reshape(-1)
    assert not torch.equal(fp32, sigma)
    threshold = min(float(grid.values.mean()), 0.05)
    assert torch.equal(grid.bits, grid.values > threshold) and 0 < grid.occupied_fraction() < 1


def test_updates_after_warm_up_take_a_quarter_of_the_cells_and_decay_the_rest_of_nothing():
    grid = OccupancyGrid(BOX, OccupancyConfig(resolution=4, warmup_steps=0, decay=0.5))
    grid.values.fill_(1.0)
    grid.update(lambda p: torch.zeros(p.shape[0]), step=7)
    assert int((grid.values == 0.5).sum()) == 4**3 // 4 and int((grid.values == 1.0).sum()) == 4**3 - 4**3 // 4
    again = OccupancyGrid(BOX, OccupancyConfig(resolution=4, warmup_steps=0, decay=0.5))
    again.values.fill_(1.0)
    again.update(lambda p: torch.zeros(p.shape[0]), step=7)
    assert torch.equal(again.values, grid.values)  # seeded by the step: every process computes the same grid


def test_the_grid_lookup_agrees_with_the_decoders_inside_at_and_beyond_the_box():
    """The marcher's lookup (a bitfield with an empty border) against the format decoder's plain NumPy one."""
    decoder = load_file(Path(__file__).resolve().parents[1] / "docs" / "int8_decoder.py")
    generator = torch.Generator().manual_seed(0)
    grid = OccupancyGrid(torch.tensor([[-1.5, -1.0, -0.5], [1.5, 2.0, 1.5]]), OccupancyConfig(resolution=7))
    grid.bits.copy_(torch.rand(7, 7, 7, generator=generator) < 0.5)
    lo, hi = grid.aabb
    points = lo - 0.5 + torch.rand(20000, 3, generator=generator) * (hi - lo + 1)
    edges = torch.stack([lo, hi, torch.nextafter(hi, lo)])  # in, out, (rounding)
    odd = torch.tensor([[float("nan"), 0, 0], [0, float("inf"), 0], [0, 0, -float("inf")]])
    points = torch.cat([points, edges, odd])
    info = {"resolution": 7, "aabb": grid.aabb.tolist()}
    reference = decoder.Grid(grid.packed().numpy(), info).occupied(points.numpy())
    occupied = grid.occupied(points)
    assert torch.equal(occupied, torch.from_numpy(reference))
    index, inside = grid.cells(points)
    assert torch.equal(occupied, inside & grid.bits.reshape(-1)[index])
    assert 0.4 < float(occupied[inside].float().mean()) < 0.6 and 0.3 < float(inside.float().mean()) < 0.45
    assert inside[-6] and not inside[-5] and not inside[-3:].any()


def test_packed_bitfield_round_trips_and_bad_bytes_are_reported():
    grid = OccupancyGrid(BOX, OccupancyConfig(resolution=5))
    grid.bits.copy_(torch.rand(5, 5, 5, generator=torch.Generator().manual_seed(0)) < 0.4)
    other = OccupancyGrid(BOX, OccupancyConfig(resolution=5))
    other.load_packed(grid.packed(), "model.safetensors")
    assert torch.equal(other.bits, grid.bits)
    with pytest.raises(ValueError, match="model.safetensors: occupancy grid bits are not zlib"):
        other.load_packed(torch.zeros(7, dtype=torch.uint8), "model.safetensors")
    small = OccupancyGrid(BOX, OccupancyConfig(resolution=4))
    with pytest.raises(ValueError, match="a 4\\^3 grid needs 64"):
        small.load_packed(grid.packed(), "model.safetensors")


def test_export_carries_the_grid_bit_for_bit_and_renders_as_its_fake_quantized_run(
    occupancy_run: Path, occupancy_export: Path
):
    from nerfstudio.utils.eval_utils import eval_setup

    from nerfqat_plugin.int8_format import read_file
    from nerfqat_plugin.nerf.export import GRID_TENSOR
    from nerfqat_plugin.quant.int8 import set_kernel

    _, trained, _, _ = eval_setup(occupancy_run, test_mode="inference")
    _, exported, _, _ = eval_setup(occupancy_export / "config.yml", test_mode="inference")
    assert torch.equal(exported.model.grid.bits, trained.model.grid.bits)
    assert 0 < trained.model.grid.occupied_fraction() < 1
    tensors, metadata = read_file(occupancy_export / "model.safetensors")
    assert GRID_TENSOR in tensors and not any(k.startswith("coarse.") for k in tensors)
    cameras = trained.datamanager.dataparser.get_dataparser_outputs(split="test").cameras
    with torch.no_grad():
        expected = trained.model.get_outputs_for_camera(cameras[0:1])
        for kernel in ("auto", "int"):  # the default kernels of this CPU, then the integer product by name
            if kernel != "auto":
                for mlp in exported.model.mlps:
                    set_kernel(mlp, kernel, compile=False)
            got = exported.model.get_outputs_for_camera(cameras[0:1])
            for key in ("rgb", "accumulation", "depth", "mlp_samples"):
                assert torch.equal(got[key], expected[key]), (kernel, key)
    assert float(got["mlp_samples"].mean()) < exported.model.config.occupancy.samples


def test_an_export_whose_sampler_does_not_match_its_config_fails_naming_the_file(occupancy_export: Path, tmp_path):
    import shutil

    import yaml
    from nerfstudio.utils.eval_utils import eval_setup

    from nerfqat_plugin.int8_format import Int8ExportError

    export = tmp_path / "export"
    shutil.copytree(occupancy_export, export)
    config = yaml.load((export / "config.yml").read_text(), Loader=yaml.Loader)
    config.pipeline.model.sampler = "hierarchical"
    (export / "config.yml").write_text(yaml.dump(config))
    with pytest.raises(Int8ExportError, match="model.safetensors: holds the MLPs \\['fine'\\]"):
        eval_setup(export / "config.yml", test_mode="inference")
