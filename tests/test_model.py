"""The nerf-qat model outside the trainer: QAT schedule, outputs, sizes."""

import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox

from nerfqat_plugin.nerf.model import NeRFQATModel, NeRFQATModelConfig
from nerfqat_plugin.quant import QuantConfig


def _model(**quant) -> NeRFQATModel:
    config = NeRFQATModelConfig(
        num_layers=2, layer_width=16, skip_layer=1, view_width=8, num_coarse_samples=4, num_importance_samples=4,
        sampler="hierarchical", quant=QuantConfig(**quant),
    )  # fmt: skip
    return NeRFQATModel(config, scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1)


def test_schedule_starts_quantization_and_freezes_observers_at_their_steps():
    model = _model(quant_start_step=5, freeze_observers_step=10)
    quantizer = model.field_fine.mlp.trunk[0].out_quant
    states = {}
    for step in (0, 4, 5, 9, 10, 50):
        model.update_to_step(step)
        states[step] = (quantizer.quant_active, quantizer.observing)
    assert states == {
        0: (False, True), 4: (False, True), 5: (True, True), 9: (True, True), 10: (True, False), 50: (True, False)
    }  # fmt: skip


def test_disabled_quantization_never_activates():
    model = _model(enabled=False)
    model.update_to_step(100)
    assert not model.field_coarse.mlp.trunk[0].quant_active


def test_outputs_include_fine_and_coarse_passes():
    torch.manual_seed(0)
    model = _model()
    n = 5
    rays = RayBundle(
        origins=torch.zeros(n, 3),
        directions=torch.nn.functional.normalize(torch.randn(n, 3), dim=-1),
        pixel_area=torch.ones(n, 1),
        camera_indices=torch.zeros(n, 1, dtype=torch.long),
    )
    outputs = model(rays)
    for key in ("rgb", "depth", "accumulation", "rgb_coarse", "depth_coarse", "accumulation_coarse"):
        assert key in outputs and outputs[key].shape[0] == n, key


def test_default_size_metrics():
    """The original NeRF MLPs: two with the hierarchical sampler, one and the grid's compressed bitfield with the
    occupancy sampler."""
    box = SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3]))
    sizes = {
        sampler: NeRFQATModel(NeRFQATModelConfig(sampler=sampler), scene_box=box, num_train_data=1).size_metrics()
        for sampler in ("hierarchical", "occupancy")
    }
    assert sizes["hierarchical"]["num_params"] == 1_191_688
    assert sizes["hierarchical"]["model_bytes_fp32"] == 4 * 1_191_688
    assert sizes["hierarchical"]["model_bytes_quantized"] < 1_230_000
    one, grid = sizes["occupancy"], 64**3 // 8  # a fresh grid: every cell occupied, compressed to a few hundred bytes
    assert one["num_params"] == 595_844
    assert 4 * 595_844 < one["model_bytes_fp32"] < 4 * 595_844 + grid / 10
    assert one["model_bytes_quantized"] < 1_230_000 / 2 + grid / 10


def _rays(n: int) -> RayBundle:
    return RayBundle(
        origins=torch.zeros(n, 3),
        directions=torch.nn.functional.normalize(torch.randn(n, 3), dim=-1),
        pixel_area=torch.ones(n, 1),
        camera_indices=torch.zeros(n, 1, dtype=torch.long),
    )


def test_cpu_rendering_in_tiles_gives_the_whole_batch_values():
    """Without gradients the field runs its MLP over tiles of samples (here 7, not dividing the 11 x 8): the same
    outputs as the whole batch at once, bit for bit with quantization on (exact products of codes)."""
    torch.manual_seed(0)
    model = _model(quant_start_step=0)
    model.update_to_step(1)  # quantization on, observers updating
    rays = _rays(11)
    model.train()
    model(rays)  # calibrate the observers
    model.update_to_step(10**6)  # observers frozen: every call below sees the same scales
    model.eval()
    outputs = {}
    for tile in (0, 7):
        for f in (model.field_coarse, model.field_fine):
            f.cpu_tile_samples = tile
        with torch.no_grad():
            outputs[tile] = model(rays)
    for key, whole in outputs[0].items():
        assert torch.equal(outputs[7][key], whole), key
