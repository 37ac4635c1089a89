"""The integer export of nerfacto-qat: its file, its renders against the fake-quantized run's, moved, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from nerfqat_plugin.int8_format import WEIGHTS_FILE, Int8ExportError, read_file
from tests.conftest import eval_in_process


def _copy_with(export: Path, dst: Path, **model_settings) -> Path:
    """A copy of the export folder, its config's model settings changed; its config.yml."""
    shutil.copytree(export, dst)
    config = yaml.load((dst / "config.yml").read_text(), Loader=yaml.Loader)
    for name, value in model_settings.items():
        setattr(config.pipeline.model, name, value)
    (dst / "config.yml").write_text(yaml.dump(config))
    return dst / "config.yml"


def test_the_file_holds_codes_steps_integer_mlps_and_the_mean_appearance(nerfacto_export: Path, nerfacto_run: Path):
    tensors, meta = read_file(nerfacto_export / WEIGHTS_FILE)
    arch = json.loads(meta["architecture"])
    assert arch["method"] == "nerfacto-qat" and arch["table_bits"] == 4 and arch["log2_hashmap_size"] == 10
    tables = sorted(k[: -len(".codes")] for k in tensors if k.endswith(".codes"))
    assert len(tables) == 3  # the field's grid and each proposal network's, once each
    for name in tables:
        codes, steps = tensors[f"{name}.codes"], tensors[f"{name}.steps"]
        assert codes.dtype == torch.uint8 and steps.dtype == torch.float32 and bool((steps > 0).all())
    assert json.loads(meta["table_rows"]) == {"rows": "reachable", "corner_limit": 2**21}
    # a proposal grid's coarse levels (resolution 16 over 2^17 rows) reach few of their rows: only those are stored
    for name in tables:
        levels, rows = (4, 2**10) if name.startswith("field.") else (5, 2**17)
        assert tensors[f"{name}.codes"].numel() <= levels * rows * 2 * 4 // 8  # levels x rows x features x 4 bits
        if not name.startswith("field."):
            assert tensors[f"{name}.codes"].numel() < 0.7 * levels * rows * 2 * 4 // 8
    assert tensors["field.appearance_mean"].shape == (32,)
    assert {"field.mlp_head.layers.0.weight", "field.mlp_base.1.input_quant.0.qparams"} <= set(tensors)
    checkpoint = next((nerfacto_run.parent / "nerfstudio_models").glob("step-*.ckpt"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["pipeline"]
    unique = {v.data_ptr(): v for k, v in state.items() if k.startswith(("_model.field.", "_model.proposal_networks."))}
    fp32 = 4 * sum(v.numel() for v in unique.values() if v.is_floating_point() and v.dim() > 0)
    size = (nerfacto_export / WEIGHTS_FILE).stat().st_size
    assert size <= fp32 / 4, (size, fp32)


def test_the_moved_export_renders_what_the_fake_quantized_run_rendered(
    nerfacto_export: Path, nerfacto_run: Path, tmp_path: Path
):
    trained = eval_in_process(nerfacto_run, tmp_path / "trained.json")
    moved = tmp_path / "elsewhere" / "nerfacto-int8"
    moved.parent.mkdir()
    shutil.copytree(nerfacto_export, moved)
    exact = _copy_with(nerfacto_export, tmp_path / "int-kernel", int8_kernel="int")
    models = nerfacto_run.parent / "nerfstudio_models"
    hidden = nerfacto_run.parent / "hidden_models"
    models.rename(hidden)  # the export must not need the training checkpoint
    try:
        default = eval_in_process(moved / "config.yml", tmp_path / "default.json")
        bit_exact = eval_in_process(exact, tmp_path / "int.json")
    finally:
        hidden.rename(models)
    assert (bit_exact["psnr"], bit_exact["ssim"]) == (trained["psnr"], trained["ssim"])
    assert abs(default["psnr"] - trained["psnr"]) <= 0.02 and abs(default["ssim"] - trained["ssim"]) <= 1e-3


def test_an_export_that_holds_every_table_row_as_files_written_before_loads_and_encodes_the_same(
    nerfacto_export: Path, nerfacto_run: Path, tmp_path: Path
):
    from nerfstudio.utils.eval_utils import eval_setup

    from nerfqat_plugin.nerfacto.encoding import QuantHashEncoding
    from nerfqat_plugin.nerfacto.export import TABLE_ROWS, quantized_parts
    from nerfqat_plugin.quant.pack import pack_bits

    _, trained, _, _ = eval_setup(nerfacto_run, test_mode="inference")
    config = _copy_with(nerfacto_export, tmp_path / "dense")
    path = config.parent / WEIGHTS_FILE
    tensors, meta = read_file(path)
    for name, table in quantized_parts(trained.model)[0].items():  # every row's code, as the exporter wrote them
        codes, _ = table.codes()
        tensors[f"{name}.codes"] = pack_bits(codes.to(torch.int64) + table.qmax, table.bits)
    del meta[TABLE_ROWS]
    save_file(tensors, str(path), metadata={**meta, "coding": "{}"})
    _, dense, _, _ = eval_setup(config, test_mode="inference")
    _, sparse, _, _ = eval_setup(nerfacto_export / "config.yml", test_mode="inference")
    points = torch.rand(4096, 3, generator=torch.Generator().manual_seed(0))
    pairs = [(a, b) for a, b in zip(dense.model.modules(), sparse.model.modules(), strict=True)]
    encodings = [(a, b) for a, b in pairs if isinstance(a, QuantHashEncoding)]
    assert len(encodings) == 3
    # the dense file's unreachable rows (in the proposal grids) hold codes, the export's zeros
    assert sum(not torch.equal(a.table.weight, b.table.weight) for a, b in encodings) == 2
    for a, b in encodings:
        assert torch.equal(a(points), b(points))


def test_an_export_for_other_table_sizes_or_with_a_wrong_table_fails_with_one_clear_line(
    nerfacto_export: Path, tmp_path: Path
):
    from nerfstudio.utils.eval_utils import eval_setup

    config = _copy_with(nerfacto_export, tmp_path / "smaller", log2_hashmap_size=9)
    with pytest.raises(Int8ExportError, match="log2_hashmap_size 10 in the file, 9 in the config") as info:
        eval_setup(config, test_mode="inference")
    assert "\n" not in str(info.value)

    config = _copy_with(nerfacto_export, tmp_path / "cut")
    path = config.parent / WEIGHTS_FILE
    tensors, meta = read_file(path)
    save_file(tensors, str(path), metadata={**meta, "coding": "{}", "table_rows": '{"rows": "some"}'})
    with pytest.raises(Int8ExportError, match="table_rows metadata {'rows': 'some'} is not one this version reads"):
        eval_setup(config, test_mode="inference")
    size = tensors["field.mlp_base.0.table.codes"].numel()
    tensors["field.mlp_base.0.table.codes"] = tensors["field.mlp_base.0.table.codes"][:-8].clone()
    save_file(tensors, str(path), metadata={**meta, "coding": "{}"})
    with pytest.raises(Int8ExportError, match=rf"field.mlp_base.0.table.codes has shape \({size - 8},\)"):
        eval_setup(config, test_mode="inference")


def test_an_ablation_run_is_not_exported(nerfacto_run: Path, tmp_path: Path):
    from nerfqat_plugin.export import ExportInt8

    config = yaml.load(nerfacto_run.read_text(), Loader=yaml.Loader)
    config.pipeline.model.quantize = "tables"  # the same checkpoint, said to quantize its tables alone
    ablation = tmp_path / "config.yml"
    ablation.write_text(yaml.dump(config))
    with pytest.raises(ValueError, match="an ablation"):
        ExportInt8(load_config=ablation, output_dir=tmp_path / "out").run()
    assert not (tmp_path / "out").exists()
