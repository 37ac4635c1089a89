"""Integer inference reproduces the fake-quantized model bit for bit, and matches a dequantized fp32 oracle."""

import copy

import pytest
import torch
import torch.nn.functional as F

from nerfqat_plugin.mlp import NeRFMLP
from nerfqat_plugin.quant import QuantConfig, int8, set_quant_state
from nerfqat_plugin.quant.dispatch import FUSED, int8_candidates
from nerfqat_plugin.quant.int8 import IntLinear, IntTensor, convert_to_int, set_kernel
from nerfqat_plugin.quant.kernels import int_mm, onednn_available


def _trained_mlp(config: QuantConfig, width: int = 64) -> NeRFMLP:
    """A small MLP whose observers have seen a few batches, then frozen (eval mode)."""
    torch.manual_seed(0)
    mlp = NeRFMLP(63, 27, config, num_layers=4, layer_width=width, skip_layer=2, view_width=32).train()
    set_quant_state(mlp, active=True, observe=True)
    for _ in range(3):
        raw, h = mlp.density(torch.rand(512, 63) * 2 - 1)
        mlp.color(h, torch.rand(512, 27) * 2 - 1)
    return mlp.eval()


def _outputs(mlp, pos, dirs):
    with torch.no_grad():
        raw, h = mlp.density(pos)
        return raw, mlp.color(h, dirs)


CONFIGS = [
    QuantConfig(),
    QuantConfig(fused=False),
    QuantConfig(weight_bits=4),
    QuantConfig(weight_bits=3, activation_bits=6),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["w8a8", "w8a8-unfused", "w4a8", "w3a6"])
@pytest.mark.parametrize("kernel", ["int", "float"])
def test_integer_mlp_is_bit_exact_with_fake_quantization(config, kernel):
    mlp = _trained_mlp(config)
    int_mlp = convert_to_int(copy.deepcopy(mlp))
    set_kernel(int_mlp, kernel, compile=False)
    pos, dirs = torch.rand(3, 700, 63) * 2 - 1, torch.rand(3, 700, 27) * 2 - 1  # batch dims are kept
    for expected, got in zip(_outputs(mlp, pos, dirs), _outputs(int_mlp, pos, dirs), strict=True):
        assert got.shape == expected.shape
        assert torch.equal(got, expected), f"max difference {(got - expected).abs().max().item()}"


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN int8 Linear")
@pytest.mark.parametrize("config", CONFIGS, ids=["w8a8", "w8a8-unfused", "w4a8", "w3a6"])
def test_onednn_kernel_matches_fake_quantization_to_a_code_step(config):
    """oneDNN rounds its requantization its own way: allow rare one-step differences, nothing more.

    Where oneDNN's product is not exact (x86 without VNNI), "onednn" resolves to an exact kernel: the chosen path.
    """
    mlp = _trained_mlp(config)
    int_mlp = convert_to_int(copy.deepcopy(mlp))
    set_kernel(int_mlp, "onednn", compile=False)
    pos, dirs = torch.rand(4000, 63) * 2 - 1, torch.rand(4000, 27) * 2 - 1
    with torch.no_grad():
        x = mlp.position_quant(pos)
        hq = mlp.trunk[0](x)
        xi = int_mlp.position_quant(pos)
        hi = int_mlp.trunk[0](xi)
    assert torch.equal(xi.codes.float() - xi.zero_point, x.centered)  # input quantization is the same function
    diff = (hi.codes.float() - hi.zero_point - hq.centered).abs()
    assert diff.max() <= 1 and diff.mean() < 1e-3, (diff.max(), diff.mean())
    (raw, rgb), (raw_i, rgb_i) = _outputs(mlp, pos, dirs), _outputs(int_mlp, pos, dirs)
    # one code step of a 256-wide activation moves a 0..1 colour by far less than 1/255 on average
    assert (rgb_i - rgb).abs().mean() < 1e-3 and (rgb_i - rgb).abs().max() < 0.05
    assert (raw_i - raw).abs().mean() < 1e-2 * raw.abs().mean() + 1e-4


def test_compiled_integer_mlp_is_bit_exact():
    mlp = _trained_mlp(QuantConfig())
    int_mlp = convert_to_int(copy.deepcopy(mlp), kernel="int", compile=True)
    pos, dirs = torch.rand(1000, 63) * 2 - 1, torch.rand(1000, 27) * 2 - 1
    for expected, got in zip(_outputs(mlp, pos, dirs), _outputs(int_mlp, pos, dirs), strict=True):
        assert torch.equal(got, expected), f"max difference {(got - expected).abs().max().item()}"


def test_integer_layer_matches_dequantized_fp32_oracle():
    """The oracle dequantizes weights and inputs and runs F.linear in fp32: equal up to fp32 rounding."""
    torch.manual_seed(0)
    codes = torch.randint(-127, 128, (16, 40), dtype=torch.int8)
    w_scale = torch.rand(16) * 0.01 + 1e-3
    bias = torch.randn(16)
    layer = IntLinear(codes, w_scale, bias, (40,), None, out_qparams=None, act_qmax=255, weight_qmax=127, kernel="int")
    x = IntTensor(torch.randint(0, 256, (300, 40), dtype=torch.uint8), torch.tensor(0.05), torch.tensor(37.0))
    oracle = F.linear(x.dequantize(), codes.float() * w_scale[:, None], bias)
    got = layer(x)
    # |y| here is at most ~20; fp32 rounding of a 40-term dot product stays far below 1e-4
    assert torch.allclose(got, oracle, rtol=0, atol=1e-4), (got - oracle).abs().max()


def test_integer_modules_follow_the_model_to_another_dtype_device_call():
    mlp = convert_to_int(_trained_mlp(QuantConfig()))
    mlp.to("cpu")  # rebuilds the derived kernel layouts; must keep working
    raw, _ = _outputs(mlp, torch.rand(10, 63), torch.rand(10, 27))
    assert raw.shape == (10, 1)


EXACT_CANDIDATES = [c for c in int8_candidates(torch.device("cpu"), 255, 127, "auto") if c != FUSED]


@pytest.mark.parametrize("product", EXACT_CANDIDATES)
@pytest.mark.parametrize("config", CONFIGS[:2], ids=["w8a8", "w8a8-unfused"])
def test_every_exact_product_this_cpu_can_choose_is_bit_exact(config, product, monkeypatch):
    """Each product ``auto`` may pick here (oneDNN on 7-bit halves on CPUs without VNNI, _int_mm, fp32, ...)."""
    import nerfqat_plugin.quant.int8 as int8

    monkeypatch.setattr(int8, "int8_kernel", lambda *args: product)
    mlp = _trained_mlp(config)
    int_mlp = convert_to_int(copy.deepcopy(mlp))
    pos, dirs = torch.rand(2, 600, 63) * 2 - 1, torch.rand(2, 600, 27) * 2 - 1
    for expected, got in zip(_outputs(mlp, pos, dirs), _outputs(int_mlp, pos, dirs), strict=True):
        assert torch.equal(got, expected), f"{product}: max difference {(got - expected).abs().max().item()}"


@pytest.mark.parametrize("m,k,n", [(5, 63, 3), (17, 27, 128), (300, 256, 1)])
def test_int_mm_padded_for_cuda_shapes_is_the_plain_product(m, k, n):
    """CUDA's _int_mm needs m > 16 and k, n multiples of 8: the zeros padded on add nothing."""
    g = torch.Generator().manual_seed(m + k + n)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (k, n), generator=g, dtype=torch.int8)
    expected = a.to(torch.int64) @ b.to(torch.int64)
    assert torch.equal(int_mm(a, b, pad=True).to(torch.int64), expected)
    assert torch.equal(int_mm(a, b, pad=False).to(torch.int64), expected)


def test_layers_of_float_and_integer_products_mixed_hand_codes_on_exactly(monkeypatch):
    """Codes travel as fp32 after a float product and as uint8 after an integer one; a layer takes either."""
    import nerfqat_plugin.quant.int8 as int8

    # trunk and feature layers (64 wide) multiply in fp32, the heads and the view layer with _int_mm
    monkeypatch.setattr(int8, "int8_kernel", lambda device, k, n, *rest: "fp32" if n == 64 else "int_mm")
    mlp = _trained_mlp(QuantConfig())
    int_mlp = convert_to_int(copy.deepcopy(mlp))
    pos, dirs = torch.rand(300, 63) * 2 - 1, torch.rand(300, 27) * 2 - 1
    for expected, got in zip(_outputs(mlp, pos, dirs), _outputs(int_mlp, pos, dirs), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("config", CONFIGS[:2], ids=["w8a8", "w8a8-unfused"])
def test_one_compiled_graph_per_mlp_gives_the_fake_quantized_outputs(config):
    """Float products (and _int_mm) let a whole integer MLP compile as one graph (what CPU rendering runs): the
    same density and RGB logits, bit for bit; oneDNN's kernels keep their own calls."""
    from nerfqat_plugin.field import _mlp_outputs
    from nerfqat_plugin.quant.compiled import call, eager_functions

    mlp = _trained_mlp(config)
    int_mlp = convert_to_int(copy.deepcopy(mlp), kernel="float", compile=True)
    assert int8.one_graph(int_mlp, torch.device("cpu"))
    pos, dirs = torch.rand(2, 300, 63) * 2 - 1, torch.rand(2, 300, 27) * 2 - 1
    with torch.no_grad():
        expected = _mlp_outputs(mlp, pos, dirs)
        got = call(_mlp_outputs, (int_mlp, pos, dirs), True)
    assert "_mlp_outputs" not in eager_functions()
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(g, e), (g - e).abs().max()
    if onednn_available():
        set_kernel(int_mlp, "onednn", compile=True)  # oneDNN (or, where inexact here, its fallback)
        layers = [m for m in int_mlp.modules() if isinstance(m, IntLinear)]
        uses_onednn = any(m.resolved_kernel(torch.device("cpu")).startswith("onednn") for m in layers)
        assert int8.one_graph(int_mlp, torch.device("cpu")) == (not uses_onednn)
