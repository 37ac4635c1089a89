"""The NumPy reference decoder of docs/int8-format.md against the plugin's bit-exact integer kernel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nerfqat_plugin.int8_format import WEIGHTS_FILE
from tests.conftest import load_file

DECODER = Path(__file__).resolve().parents[1] / "docs" / "int8_decoder.py"


@pytest.fixture(scope="module")
def decoder():
    return load_file(DECODER)


@pytest.fixture(scope="module")
def plugin_model(exported_run: Path):
    """The export as the plugin runs it, every layer on the bit-exact 'int' kernel (eager)."""
    from nerfstudio.utils.eval_utils import eval_setup

    from nerfqat_plugin.quant.int8 import set_kernel

    _, pipeline, _, _ = eval_setup(exported_run / "config.yml", test_mode="inference")
    for mlp in pipeline.model.mlps:
        set_kernel(mlp, "int", compile=False)
    return pipeline.model


def _plugin_codes(field, positions: torch.Tensor, directions: torch.Tensor):
    """(raw density, rgb, {quantizer name: codes}) of a field's MLP, from hooks on its integer modules."""
    from nerfqat_plugin.quant.int8 import IntActQuantizer, IntLinear

    mlp, codes, hooks = field.mlp, {}, []
    for name, module in mlp.named_modules():
        if isinstance(module, IntActQuantizer):
            key = name
        elif isinstance(module, IntLinear) and module.out_scale is not None:
            key = f"{name}.out_quant"
        else:
            continue
        hooks.append(module.register_forward_hook(lambda m, i, o, key=key: codes.__setitem__(key, o.codes.numpy())))
    try:
        with torch.no_grad():
            raw, trunk = mlp.density(field.position_encoding(0.5 * positions))
            rgb = mlp.color(trunk, field.direction_encoding(0.5 * directions))
    finally:
        for hook in hooks:
            hook.remove()
    return raw.numpy(), rgb.numpy(), codes


def _points(n: int = 2000):
    g = torch.Generator().manual_seed(0)
    positions = torch.rand(n, 3, generator=g) * 3 - 1.5
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return positions, directions


@pytest.mark.parametrize("prefix", ["coarse.", "fine."])
def test_decoder_reproduces_every_integer_code_on_the_same_encoded_inputs(decoder, plugin_model, exported_run, prefix):
    field = plugin_model.field_coarse if prefix == "coarse." else plugin_model.field_fine
    positions, directions = _points()
    raw, rgb, codes = _plugin_codes(field, positions, directions)
    with torch.no_grad():
        pos_enc = field.position_encoding(0.5 * positions).numpy()
        dir_enc = field.direction_encoding(0.5 * directions).numpy()
    out = decoder.Int8File(str(exported_run / WEIGHTS_FILE)).network(prefix).forward_encoded(pos_enc, dir_enc)
    assert set(out.codes) == set(codes) and len(codes) == 2 + 2 + 2  # 2 inputs, 2 trunk layers, feature, view
    for name, expected in codes.items():
        np.testing.assert_array_equal(out.codes[name], expected.astype(np.float32), err_msg=name)
    np.testing.assert_array_equal(out.raw_density, raw)  # float output of the integer arithmetic, bit for bit
    np.testing.assert_allclose(out.rgb, rgb, rtol=0, atol=1e-6)  # sigmoid: NumPy's and PyTorch's differ by an ulp


def test_decoder_encodes_positions_and_directions_as_the_plugin(decoder, plugin_model, exported_run):
    positions, directions = _points()
    field = plugin_model.field_fine
    with torch.no_grad():
        expected = field.position_encoding(0.5 * positions).numpy()
    np.testing.assert_allclose(decoder.encode(positions.numpy(), 10), expected, rtol=0, atol=2e-6)
    raw, rgb, codes = _plugin_codes(field, positions, directions)
    network = decoder.Int8File(str(exported_run / WEIGHTS_FILE)).network("fine.")
    out = network.forward(positions.numpy(), directions.numpy())
    # sin in NumPy and PyTorch may differ by an ulp, which can move a value across a rounding boundary: rare
    assert np.mean(out.codes["position_quant"] == codes["position_quant"]) > 0.999
    assert np.mean(np.abs(out.rgb - rgb).max(axis=1) < 1e-6) > 0.99
    assert np.mean(np.abs(out.density - np.maximum(raw, 0))[:, 0] < 1e-6) > 0.99


def test_decoder_reads_packed_sub_byte_codes(decoder):
    from nerfqat_plugin.quant.pack import pack_bits

    for bits in (2, 3, 4, 8):
        values = torch.randint(0, 2**bits, (1001,))
        packed = pack_bits(values, bits).numpy()
        np.testing.assert_array_equal(decoder.unpack_codes(packed, bits, 1001), values.numpy())


def test_decoder_reads_coded_tensors_and_version_1_files(decoder, tmp_path: Path):
    from safetensors.torch import save_file

    from nerfqat_plugin.int8_format import read_file, write_file

    peaked = (torch.randn(20_000) * 5 + 100).round().clamp(0, 255).to(torch.uint8)
    tensors = {"fine.trunk.0.weight": peaked, "fine.trunk.0.bias": torch.randn(5)}
    path = tmp_path / WEIGHTS_FILE
    write_file(path, tensors, {"architecture": {"num_layers": 1}, "quant": {"weight_bits": 8}})
    assert json.loads(decoder.read_safetensors(str(path))[1]["coding"])  # the file does hold a coded tensor
    ours = decoder.Int8File(str(path)).tensors
    np.testing.assert_array_equal(ours["fine.trunk.0.weight"], peaked.numpy())
    np.testing.assert_array_equal(ours["fine.trunk.0.bias"], tensors["fine.trunk.0.bias"].numpy())
    decoded, meta = read_file(path)
    del meta["coding"]
    save_file(decoded, str(path), metadata={**meta, "format_version": "1"})
    np.testing.assert_array_equal(decoder.Int8File(str(path)).tensors["fine.trunk.0.weight"], peaked.numpy())


def _held_out_split(folder: Path) -> str:
    splits = json.loads((folder / "cameras.json").read_text())["splits"]
    return next(s for s in ("test", "val") if s in splits)


def _plugin_view(folder: Path, split: str, index: int):
    """The plugin's render (through nerfstudio, as ns-eval renders) of a view of an export's camera record."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(folder / "config.yml", test_mode="inference")
    cameras = pipeline.datamanager.dataparser.get_dataparser_outputs(split=split).cameras
    with torch.no_grad():
        out = pipeline.model.get_outputs_for_camera(cameras[index : index + 1].to(pipeline.model.device))
    return {k: out[k].cpu().numpy() for k in ("rgb", "depth", "accumulation")}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else -10 * np.log10(mse)


@pytest.mark.parametrize("export", ["exported_run", "moved_llff_export"])
def test_decoder_renders_a_held_out_view_from_the_folder_alone_as_the_plugin(decoder, export, request):
    """Blender (near/far rays) and forward-facing (NDC) exports: the NumPy decoder, reading only the export folder
    (weights, their render settings, cameras.json), renders the held-out view the plugin renders. The rays and the
    coarse sample positions come out bit for bit; after that, not quite: NumPy's exp and sin may differ from
    PyTorch's in the last bit, and so may PyTorch's vectorised linspace and its sums and cumulative sums (weights,
    histogram, composite), whose order NumPy does not follow. An ulp in a fine sample's position can move an input
    code of the quantized network by one step, which moves that sample's density by a code step: a few pixels'
    accumulation by up to about 1e-4 (measured: 94-95 dB over the image)."""
    folder: Path = request.getfixturevalue(export)
    split = _held_out_split(folder)
    expected = _plugin_view(folder, split, 0)
    view = decoder.render_view(str(folder), split, 0)
    assert view.rgb.shape == expected["rgb"].shape and view.depth.shape == expected["depth"].shape
    psnr = _psnr(view.rgb, expected["rgb"])
    print(f"{export}: decoder vs plugin {psnr:.1f} dB, rgb max diff {np.abs(view.rgb - expected['rgb']).max():.2e}")
    assert psnr >= 60, psnr
    np.testing.assert_allclose(view.accumulation, expected["accumulation"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(view.depth, expected["depth"], rtol=0, atol=1e-3)


def test_decoder_writes_the_rendered_view_as_a_png(decoder, exported_run, tmp_path):
    from PIL import Image

    view = decoder.render_view(str(exported_run), _held_out_split(exported_run), 0)
    decoder.write_png(str(tmp_path / "view.png"), view.rgb)
    pixels = np.asarray(Image.open(tmp_path / "view.png").convert("RGB"))
    np.testing.assert_array_equal(pixels, np.clip(np.round(view.rgb * 255), 0, 255).astype(np.uint8))
