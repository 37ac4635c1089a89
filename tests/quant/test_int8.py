"""Integer inference reproduces the fake-quantized model bit for bit, and matches a dequantized fp32 oracle."""

import copy

import pytest
import torch
import torch.nn.functional as F

from nerfqat_plugin.nerf.mlp import NeRFMLP
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


FUSED_CONFIGS = [QuantConfig(activation_bits=7), QuantConfig(activation_bits=7, fused=False), QuantConfig()]
"""7-bit activations: oneDNN's int8 product is exact on every x86 CPU, so a named "onednn" runs its fused kernel
here whatever the class (with VNNI the 8-bit one too; without, "onednn" resolves to an exact kernel)."""


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN int8 Linear")
@pytest.mark.parametrize("config", FUSED_CONFIGS, ids=["w8a7", "w8a7-unfused", "w8a8"])
def test_fused_onednn_kernel_is_used_only_where_the_self_check_finds_it_exact(config):
    """Where ``fused_exact`` finds oneDNN's fused kernel rounding as training does (its requantization and its float
    epilogue), the kernel gives training's codes bit for bit: every activation code of the first layer, and the
    density and colour at the end (two-input layers included). Where it does not (an AVX-512 oneDNN scales the
    accumulator by the input's scale, then the weight's; training and an AVX2 oneDNN by their product), "auto" never
    runs the fused kernel and stays bit-exact."""
    mlp = _trained_mlp(config)
    exact = int8.fused_exact(config.activation_qmax, config.weight_qmax)
    int_mlp = convert_to_int(copy.deepcopy(mlp))
    set_kernel(int_mlp, "onednn" if exact else "auto", compile=False)
    layers = [m for m in int_mlp.modules() if isinstance(m, IntLinear)]
    kernels = {m.resolved_kernel(torch.device("cpu")) for m in layers}
    if exact and config.activation_bits == 7:
        assert kernels == {FUSED}, kernels
    if not exact:
        assert FUSED not in kernels, kernels
    pos, dirs = torch.rand(20000, 63) * 2 - 1, torch.rand(20000, 27) * 2 - 1
    with torch.no_grad():
        hq = mlp.trunk[0](mlp.position_quant(pos))
        hi = int_mlp.trunk[0](int_mlp.position_quant(pos))
    assert torch.equal(hi.codes.float() - hi.zero_point, hq.centered), hi.codes.float() - hi.zero_point - hq.centered
    for expected, got in zip(_outputs(mlp, pos, dirs), _outputs(int_mlp, pos, dirs), strict=True):
        assert torch.equal(got, expected), f"{kernels}: max difference {(got - expected).abs().max().item()}"


def _stand_in_fused(grid=None, scales_one_after_the_other=False):
    """A fused kernel that computes as training does, except for the requantization's ``grid`` (training's
    ``rounding.grid`` if None) or for scaling the accumulator by the input's scale, then by the weight's."""
    from nerfqat_plugin.quant import rounding

    def fused(layer, inputs, compile):
        accs = int8._accumulate([tuple(x) for x in inputs], layer._float_weights, layer._float_row_sums, "fp32")
        if scales_one_after_the_other:
            parts = [(acc * x.scale) * layer.weight_scale for acc, x in zip(accs, inputs, strict=True)]
            y = parts[-1] + layer.bias
            for part in parts[:-1]:
                y = y + part
        else:
            y = rounding.rescale(accs, [x.scale for x in inputs], layer.weight_scale, layer.bias)
        if layer.out_scale is None:
            return y
        v = torch.relu(y) if layer.relu == "fused" else y
        q = (grid or rounding.grid)(v, layer.out_scale, layer.out_zero_point, 0, layer.act_qmax)
        return torch.maximum(q, layer.out_zero_point) if layer.relu == "unfused" else q

    return fused


def test_fused_self_check_catches_a_kernel_that_rounds_in_another_order(monkeypatch):
    """Rounding ``y / scale`` (not ``y * (1 / scale)``), adding the zero point after the rounding, or scaling the
    accumulator by one scale after the other changes one value in 10^5 or 10^6: the self-check still finds each.
    The fused kernel is a stand-in here, so the check is tested on every CPU, with or without oneDNN."""
    monkeypatch.setattr(int8, "onednn_exact", lambda act_qmax, weight_qmax: True)
    int8.fused_exact.cache_clear()
    monkeypatch.setattr(IntLinear, "_onednn_fused", _stand_in_fused())
    assert int8.fused_exact(127, 127)
    others = {
        "divide": _stand_in_fused(lambda x, s, zp, lo, hi: torch.clamp(torch.round(x / s) + zp, lo, hi)),
        "zero point after rounding": _stand_in_fused(
            lambda x, s, zp, lo, hi: torch.clamp(torch.round(x * (1.0 / s)) + zp, lo, hi)
        ),
        "one scale after the other": _stand_in_fused(scales_one_after_the_other=True),
    }
    for name, fused in others.items():
        int8.fused_exact.cache_clear()
        monkeypatch.setattr(IntLinear, "_onednn_fused", fused)
        assert not int8.fused_exact(127, 127), name
    int8.fused_exact.cache_clear()


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


EXACT_CANDIDATES = int8_candidates(torch.device("cpu"), 255, 127, "auto", lambda: int8.fused_exact(255, 127))
"""Every kernel ``auto`` may choose on this CPU for 8-bit codes (the fused one where its self-check passes)."""


@pytest.mark.parametrize("product", EXACT_CANDIDATES)
@pytest.mark.parametrize("config", CONFIGS[:2], ids=["w8a8", "w8a8-unfused"])
def test_every_exact_product_this_cpu_can_choose_is_bit_exact(config, product, monkeypatch):
    """Each kernel ``auto`` may pick here (oneDNN on 7-bit halves on CPUs without VNNI, _int_mm, fp32, oneDNN's
    fused kernel where its self-check passes, ...)."""
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
    from nerfqat_plugin.nerf.field import _mlp_outputs
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
