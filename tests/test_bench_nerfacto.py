"""scripts/bench_nerfacto.py's bookkeeping across seeds and sittings (its training is the nerfacto tests' code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_nerfacto.py"


def _row(variant: str, seed: int, psnr: float) -> dict:
    return {"variant": variant, "seed": seed, "psnr": psnr}


def test_differences_to_nerfacto_are_paired_by_seed():
    bench = load_file(SCRIPT)
    rows = [_row("nerfacto", 0, 18.0), _row("nerfacto", 1, 19.0), _row("8 bit", 0, 17.9), _row("8 bit", 1, 18.7)]
    rows.append(_row("8 bit", 2, 30.0))  # no nerfacto of seed 2: not paired
    variants = {bench.row_name(r["variant"], r["seed"]): r for r in rows}
    assert "8 bit, seed 1" in variants and "8 bit" in variants
    (nerfacto, eight) = bench.across_seeds(variants)
    assert nerfacto["seeds"] == [0, 1] and "paired_n" not in nerfacto
    assert eight["seeds"] == [0, 1, 2] and eight["paired_n"] == 2
    assert eight["vs_nerfacto_mean"] == pytest.approx(-0.2) and eight["vs_nerfacto_min"] == pytest.approx(-0.3)
    assert eight["psnr_max"] == 30.0
    # a row of seed 1 is compared with seed 1's nerfacto, a row of a seed without one with seed 0's
    assert bench._baseline(variants, variants["8 bit, seed 1"])["psnr"] == 19.0
    assert bench._baseline(variants, variants["8 bit, seed 2"])["psnr"] == 18.0


def test_append_refuses_a_report_of_other_settings(tmp_path: Path):
    bench = load_file(SCRIPT)
    out = tmp_path / "report"
    run = bench.BenchNerfacto(output=out, append=True)
    new = {"command": "c", "commit": "x", "machine": {}, "steps": 300, "rays": 512}
    new.update(log2_hashmap_size=17, quant_start_step=100)
    with pytest.raises(SystemExit, match="does not exist"):
        run._appended_to(new)
    out.with_suffix(".json").write_text(json.dumps({**new, "steps": 200, "scenes": {}}))
    with pytest.raises(SystemExit, match="steps 200 there, 300 here"):
        run._appended_to(new)
    out.with_suffix(".json").write_text(json.dumps({**new, "scenes": {"fern": {}}}))
    merged = run._appended_to({**new, "command": "second"})
    assert merged["scenes"] == {"fern": {}} and merged["appended"][0]["command"] == "second"


def test_the_nerf_qat_reference_row_trains_nerf_qat_on_the_same_rays_steps_and_qat_start(tmp_path: Path):
    """The catalogue's nerf-qat entry builds nerf-qat's config (its CPU preset network), not nerfacto-qat's: LLFF
    scenes in NDC as nerf-qat trains them (nerfacto-qat's in world space), Blender scenes with near/far planes."""
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    from nerfqat_plugin.llff import LLFFDataParserConfig
    from nerfqat_plugin.nerf.model import NeRFQATModelConfig
    from nerfqat_plugin.nerfacto.model import NerfactoQATModelConfig

    bench = load_file(SCRIPT)
    run = bench.BenchNerfacto(steps=7, rays=96, quant_start_step=3)
    (name,) = [n for n, v in bench.VARIANTS.items() if v.method == "nerf-qat"]
    assert bench.VARIANTS[name].quantized
    llff = LLFFDataParserConfig(data=tmp_path, downscale_factor=16, ndc=False)
    config = run._config(llff, tmp_path / "a", bench.VARIANTS[name])
    model, datamanager = config.pipeline.model, config.pipeline.datamanager
    assert type(model) is NeRFQATModelConfig and model.quant.enabled and model.quant.quant_start_step == 3
    assert (model.num_layers, model.layer_width) == (4, 128) and config.max_num_iterations == 7
    assert datamanager.train_num_rays_per_batch == 96 and datamanager.dataparser.ndc and not llff.ndc
    blender = run._config(BlenderDataParserConfig(data=tmp_path), tmp_path / "b", bench.VARIANTS[name])
    assert blender.pipeline.model.collider_params == {"near_plane": 2.0, "far_plane": 6.0}
    nerfacto = run._config(llff, tmp_path / "c", bench.VARIANTS["tables 4 bit, w8a8 MLPs"])
    assert type(nerfacto.pipeline.model) is NerfactoQATModelConfig and not nerfacto.pipeline.datamanager.dataparser.ndc
