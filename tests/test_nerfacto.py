"""nerfacto-qat: the quantized hash encoding against nerfstudio's, the model against nerfstudio's nerfacto, and a
real ns-train run."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig

from nerfqat_plugin.nerfacto.encoding import QuantHashEncoding
from nerfqat_plugin.nerfacto.model import NerfactoQATModel, NerfactoQATModelConfig
from nerfqat_plugin.offline import offline_lpips
from nerfqat_plugin.quant import QuantConfig, set_quant_state
from nerfqat_plugin.quant.layers import ActQuantizer
from nerfqat_plugin.quant.table import QuantTable
from tests.conftest import eval_in_process

LEVELS = dict(num_levels=4, min_res=4, max_res=32, log2_hashmap_size=8, features_per_level=2)


def _encodings(bits: int):
    torch.manual_seed(0)
    ours = QuantHashEncoding(**LEVELS, hash_init_scale=0.1, bits=bits)
    theirs = HashEncoding(**LEVELS, implementation="torch")
    return ours, theirs


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantized_hash_encoding_is_nerfstudios_off_and_nerfstudios_on_the_quantized_table_on(bits: int):
    ours, theirs = _encodings(bits)
    points = torch.rand(2000, 3, generator=torch.Generator().manual_seed(1))
    theirs.hash_table.data.copy_(ours.table.weight.data)
    plain = ours(points)
    assert torch.equal(plain, theirs(points))
    with torch.no_grad():  # rendering gathers the eight corners at once
        assert torch.equal(ours(points), plain)
    ours.table.quant_active = True
    quantized = ours(points)
    with torch.no_grad():
        assert torch.equal(ours(points), quantized)
    codes, steps = ours.table.codes()
    qmax = 2 ** (bits - 1) - 1
    assert int(codes.abs().max()) == qmax and len(torch.unique(codes)) == 2 * qmax + 1
    theirs.hash_table.data.copy_(codes.float() * steps.repeat_interleave(2 ** LEVELS["log2_hashmap_size"])[:, None])
    assert torch.equal(quantized, theirs(points))
    assert not torch.equal(quantized, plain)


def test_reachable_rows_are_every_row_a_point_of_the_unit_cube_gathers():
    """Resolutions 4, 8, 16, 32 over 256 rows a level: the coarsest (5^3 corners) reaches fewer rows. Gathers of
    random points, and of the cells' own corners (points at the cube's faces included), all fall in the listed rows,
    and each row listed of the two coarsest levels is gathered by some corner."""
    ours, _ = _encodings(8)
    rows_per_level = 2 ** LEVELS["log2_hashmap_size"]
    reachable = ours.reachable_rows()
    assert torch.equal(reachable, torch.unique(reachable))
    per_level = torch.bincount(reachable // rows_per_level, minlength=4)
    assert per_level[0] == len(torch.unique(ours.hash_fn(_corners(4).int()[:, None, :].expand(-1, 4, -1))[:, 0]))
    assert per_level[0] < rows_per_level and per_level[3] == rows_per_level
    gathered = []
    ours.table.forward = lambda rows: gathered.append(rows.reshape(-1)) or torch.zeros(*rows.shape, 2)
    random = torch.rand(20000, 3, generator=torch.Generator().manual_seed(2)) * (1 - 1e-6)
    ours(torch.cat([random, _corners(32) / 32 * (1 - 1e-6), _corners(4) / 4]))
    gathered = torch.unique(torch.cat(gathered))
    assert bool(torch.isin(gathered, reachable).all())
    coarse = reachable[reachable < 2 * rows_per_level]
    assert bool(torch.isin(coarse, gathered).all())
    # a level of more corners than the limit counts every row (level 0 has 5^3 = 125)
    assert torch.equal(ours.reachable_rows(corner_limit=124)[:rows_per_level], torch.arange(rows_per_level))


def _corners(resolution: int) -> torch.Tensor:
    i = torch.arange(resolution + 1)
    return torch.stack(torch.meshgrid(i, i, i, indexing="ij"), dim=-1).reshape(-1, 3).float()


def test_table_gradients_are_lsqs_as_plain_autograd_computes_them():
    """The table's autograd function against LSQ written with the usual detach tricks through plain autograd."""
    generator = torch.Generator().manual_seed(0)
    table = QuantTable(2, 8, 3, bits=4, init=torch.randn(16, 3, generator=generator))
    table.quant_active = True
    table.calibrate()
    with torch.no_grad():
        table.log_step.sub_(0.5)  # smaller steps: some codes clip
    index = torch.tensor([0, 3, 3, 9, 15])
    upstream = torch.randn(5, 3, generator=generator)
    (table(index) * upstream).sum().backward()

    weight = table.weight.detach().clone().requires_grad_(True)
    log_step = table.log_step.detach().clone().requires_grad_(True)
    step = torch.exp(log_step)[index // 8][:, None]
    g = 1.0 / math.sqrt(index.numel() * 3 * table.qmax)
    step = step * g + (step - step * g).detach()  # LSQ's gradient scale
    v = torch.clamp(weight[index] / step, -table.qmax, table.qmax)
    value = (v + (torch.round(v) - v).detach()) * step  # straight-through rounding
    (value * upstream).sum().backward()
    torch.testing.assert_close(table.weight.grad, weight.grad)
    torch.testing.assert_close(table.log_step.grad, log_step.grad)
    ratio = (table.weight.detach()[index] / torch.exp(table.log_step.detach())[index // 8][:, None]).abs()
    assert bool((ratio > table.qmax).any()) and bool((ratio < table.qmax).any())  # both cases are exercised
    untouched = torch.ones(16, dtype=torch.bool)
    untouched[index] = False
    assert bool((table.weight.grad[untouched] == 0).all())  # only the gathered rows learn


def test_calibration_picks_the_step_of_least_squared_error_and_clips_at_two_bits():
    rows = torch.cat([torch.full((1, 2), 1.0), torch.linspace(-0.4, 0.4, 200).reshape(100, 2)])
    table = QuantTable(1, 101, 2, bits=2, init=rows)
    table.calibrate()
    step = float(torch.exp(table.log_step.detach()))
    assert step < 0.6  # peak / qmax would be 1.0: every mid-sized entry would round to zero
    codes, _ = table.codes()
    assert int((codes != 0).sum()) > 50
    error = lambda s: float(((torch.clamp(torch.round(rows / s), -1, 1) * s - rows) ** 2).sum())  # noqa: E731
    assert error(step) < error(1.0) and error(step) <= min(error(f / 20) for f in range(1, 21)) + 1e-6


def test_a_tables_state_comes_back_from_its_state_dict_and_another_width_is_refused():
    table = QuantTable(2, 4, 2, bits=8, init=torch.randn(8, 2))
    table.quant_active = True
    table(torch.tensor([1, 5]))  # calibrates on first use
    with torch.no_grad():
        table.log_step.sub_(0.3)  # as if learned: a fresh calibration would give other steps
    other = QuantTable(2, 4, 2, bits=8, init=torch.randn(8, 2))
    other.quant_active = True
    other(torch.tensor([0]))  # calibrated from its own rows first
    other.load_state_dict(table.state_dict())
    assert torch.equal(other(torch.arange(8)), table(torch.arange(8)))
    assert torch.equal(other.log_step, table.log_step)
    fresh = QuantTable(2, 4, 2, bits=8, init=torch.randn(8, 2)).state_dict()  # never calibrated
    other.load_state_dict(fresh)
    other(torch.tensor([0]))
    assert bool(other.calibrated) and not torch.equal(other.log_step, fresh["log_step"])  # calibrated again
    narrow = QuantTable(2, 4, 2, bits=4, init=torch.randn(8, 2))
    with pytest.raises(ValueError, match="the state has 8-bit table codes, this table has 4 bits"):
        narrow.load_state_dict(table.state_dict())


def _tiny_config(cls, **extra):
    return cls(
        num_levels=4,
        base_res=4,
        max_res=32,
        log2_hashmap_size=8,
        hidden_dim=16,
        hidden_dim_color=16,
        num_proposal_samples_per_ray=(8, 8),
        num_nerf_samples_per_ray=8,
        proposal_net_args_list=[
            {"hidden_dim": 8, "log2_hashmap_size": 8, "num_levels": 3, "max_res": 16, "use_linear": False},
            {"hidden_dim": 8, "log2_hashmap_size": 8, "num_levels": 3, "max_res": 32, "use_linear": False},
        ],
        implementation="torch",
        **extra,
    )


def _model(cls, config):
    torch.manual_seed(0)
    box = SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    return cls(config=config, scene_box=box, num_train_data=3)


def _rays(count: int = 32) -> RayBundle:
    generator = torch.Generator().manual_seed(2)
    directions = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    return RayBundle(
        origins=-2.0 * directions,
        directions=directions,
        pixel_area=torch.full((count, 1), 1e-4),
        camera_indices=torch.randint(0, 3, (count, 1), generator=generator),
        nears=torch.full((count, 1), 0.05),
        fars=torch.full((count, 1), 4.0),
    )


def test_nerfacto_qat_without_quantization_renders_as_nerfstudios_nerfacto_from_the_same_start():
    with offline_lpips():
        theirs = _model(NerfactoModel, _tiny_config(NerfactoModelConfig))
    after_theirs = torch.get_rng_state()
    ours = _model(NerfactoQATModel, _tiny_config(NerfactoQATModelConfig, quant=QuantConfig(enabled=False)))
    assert torch.equal(torch.get_rng_state(), after_theirs)  # training then draws the same rays and samples
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters()) + 4 + 3 + 3
    for model in (theirs, ours):
        model.eval()
    with torch.no_grad():
        expected, got = theirs(_rays()), ours(_rays())
    for name in ("rgb", "accumulation", "depth"):
        assert torch.equal(got[name], expected[name]), name
    # with tables that matter, quantized (the observers having seen one batch) it renders close to fp32
    with torch.no_grad():
        for table in (m for m in ours.modules() if isinstance(m, QuantTable)):
            table.weight.normal_(0.0, 0.5)
        fp32 = ours(_rays())["rgb"]
    set_quant_state(ours, active=True, observe=True)
    ours.train()
    ours(_rays())
    ours.eval()
    quantizers = [m for m in ours.modules() if isinstance(m, ActQuantizer)]
    assert quantizers and all(bool(q.initialized) for q in quantizers)
    with torch.no_grad():
        quantized = ours(_rays())["rgb"]
    spread = float(fp32.max() - fp32.min())  # the image depends on the tables: a constant image would be this far off
    assert spread > 0.03 and 0 < float((quantized - fp32).abs().max()) < 0.1 * spread


def test_nerfacto_qat_without_quantization_trains_as_nerfstudios_nerfacto_step_for_step():
    """Three Adam steps on nerfacto's own losses (photometric, interlevel, distortion): the same parameters."""
    with offline_lpips():
        theirs = _model(NerfactoModel, _tiny_config(NerfactoModelConfig))
        initial = {k: v.detach().clone() for k, v in theirs.named_parameters()}
    ours = _model(NerfactoQATModel, _tiny_config(NerfactoQATModelConfig, quant=QuantConfig(enabled=False)))
    target = {"image": torch.rand(32, 3, generator=torch.Generator().manual_seed(3))}
    for model in (theirs, ours):
        model.train()
        optimizer = torch.optim.Adam([p for group in model.get_param_groups().values() for p in group], lr=1e-2)
        torch.manual_seed(4)  # the proposal sampler's jitter
        for _ in range(3):
            optimizer.zero_grad()
            outputs = model(_rays())
            losses = model.get_loss_dict(outputs, target, model.get_metrics_dict(outputs, target))
            sum(losses.values()).backward()
            optimizer.step()
    renamed = {
        ".model.0.hash_table": ".0.table.weight",
        ".model.1.": ".1.",
        "encoding.hash_table": "encoding.table.weight",
    }
    ours_params = dict(ours.named_parameters())
    for key, value in theirs.named_parameters():
        ours_key = key
        for a, b in renamed.items():
            ours_key = ours_key.replace(a, b)
        assert torch.equal(ours_params[ours_key], value), key
    assert sum(not torch.equal(v, initial[k]) for k, v in theirs.named_parameters()) > 10  # training moved them


@pytest.mark.parametrize("quantize", ["all", "tables", "mlps"])
def test_the_ablation_switch_quantizes_the_tables_or_the_mlps_alone(quantize: str):
    from nerfqat_plugin.quant.mlp import QuantMLP

    config = _tiny_config(NerfactoQATModelConfig, quant=QuantConfig(quant_start_step=2), quantize=quantize)
    model = _model(NerfactoQATModel, config)
    kinds = {"tables": QuantTable, "mlps": QuantMLP}
    for step, started in ((1, False), (2, True)):
        model.update_to_step(step)
        for kind, cls in kinds.items():
            modules = [
                q for m in model.modules() if isinstance(m, cls) for q in m.modules() if hasattr(q, "quant_active")
            ]
            assert len(modules) >= 3
            expected = started and quantize in ("all", kind)
            assert all(q.quant_active == expected for q in modules), (step, kind)


def test_per_level_input_ranges_give_each_level_of_features_its_own_quantizer():
    config = _tiny_config(
        NerfactoQATModelConfig, quant=QuantConfig(quant_start_step=0), input_range_per_level=True, quant_compile=False
    )
    model = _model(NerfactoQATModel, config)
    base = model.field.mlp_base[1]
    assert base.in_splits == (2,) * 4 and len(base.input_quant) == 4
    assert all(len(n.mlp_base[1].input_quant) == 3 for n in model.proposal_networks)
    model.train()
    model(_rays())  # the observers see one batch
    model.eval()
    with torch.no_grad():
        features = model.field.mlp_base[0](torch.rand(64, 3))
    ranges = torch.stack([q.max_val - q.min_val for q in base.input_quant])
    assert bool((ranges > 0).all()) and features.shape[-1] == 8


def test_nerfacto_qat_refuses_tinycudann_naming_the_setting():
    with pytest.raises(ValueError, match="implementation 'tcnn' is not supported"):
        _model(NerfactoQATModel, dataclasses.replace(_tiny_config(NerfactoQATModelConfig), implementation="tcnn"))
    with pytest.raises(ValueError, match="table codes must have 2 to 8 bits, got 9"):
        NerfactoQATModelConfig(table_bits=9)


def test_ns_train_nerfacto_qat_on_cpu_quantizes_and_its_checkpoint_evaluates(tmp_path: Path, nerfacto_run: Path):
    config = nerfacto_run
    checkpoint = next((config.parent / "nerfstudio_models").glob("step-*.ckpt"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["pipeline"]
    calibrated = [k for k in state if k.endswith("table.calibrated")]
    # the field's grid and the two proposal networks' (each under two names, as in nerfstudio: encoding, mlp_base.0)
    assert len(calibrated) == 5 and all(bool(state[k]) for k in calibrated)
    steps = state["_model.field.mlp_base.0.table.log_step"]
    assert steps.shape == (4,) and bool(torch.isfinite(steps).all())
    results = eval_in_process(config, tmp_path / "eval.json")
    assert math.isfinite(results["psnr"]) and results["psnr"] > 5
