"""The fused autograd nodes against a reference written with plain autograd, eager and compiled."""

import pytest
import torch
import torch.utils.checkpoint

from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.dispatch import TrainPath, train_product_candidates
from nerfqat_plugin.quant.layers import ActQuantizer, QuantLinear, set_quant_state, set_train_kernels
from nerfqat_plugin.quant.ops import LinearOptions, QuantizeOptions, linear, quantize
from nerfqat_plugin.quant.rounding import QTensor, weight_scale


def _ste(x, scale, zero_point, qmax):
    """Reference straight-through quantizer: forward rounds, backward passes 1/scale inside the range."""
    q = x / scale + zero_point
    inside = (torch.round(q) >= 0) & (torch.round(q) <= qmax)
    codes = torch.where(inside, q + (torch.round(q) - q).detach(), torch.clamp(torch.round(q), 0, qmax).detach())
    return codes - zero_point


def _reference(inputs, weight, bias, qmax_w, out_scale, out_zp, relu_before, relu_after):
    w_scale = weight_scale(weight, qmax_w)
    w_codes = weight / w_scale[:, None] + (torch.round(weight / w_scale[:, None]) - weight / w_scale[:, None]).detach()
    y = None
    for (codes, s), w in zip(inputs, w_codes.split([c.shape[1] for c, _ in inputs], dim=1), strict=True):
        part = (codes @ w.T) * (s * w_scale)
        y = part if y is None else y + part
    y = y + bias
    v = torch.relu(y) if relu_before else y
    out = _ste(v, out_scale, out_zp, 255)
    return torch.relu(out) if relu_after else out


def _quantizer(lo: float, hi: float) -> ActQuantizer:
    q = ActQuantizer(QuantConfig())
    q.min_val.fill_(lo)
    q.max_val.fill_(hi)
    q.initialized.fill_(True)
    return q


def _paths():
    """Every path ``dispatch`` can choose on this CPU for 8-bit codes (the oneDNN product only where it is exact)."""
    products = train_product_candidates(torch.device("cpu"), 255, 127)
    return [TrainPath(p, g) for p in products for g in ("fp32", "bf16")]


@pytest.mark.parametrize("path", _paths(), ids=lambda p: f"{p.product}-{p.grad}")
@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("mode", ["fused", "unfused", "signed"])
def test_linear_and_quantize_match_plain_autograd(compile, path, mode):
    torch.manual_seed(0)
    n, widths, out = 300, (6, 5), 7
    relu = {"fused": "fused", "unfused": "unfused", "signed": None}[mode]
    weight = torch.randn(out, sum(widths), requires_grad=True)
    bias = torch.randn(out, requires_grad=True)
    dtype = path.codes_dtype
    codes = [torch.randint(0, 256, (n, w)).to(dtype).requires_grad_() for w in widths]
    scales = [torch.tensor(0.02), torch.tensor(0.05)]
    zero_points = [torch.tensor(0.0), torch.tensor(0.0)]
    quantizer = _quantizer(0.0 if mode == "fused" else -3.0, 4.0)
    out_scale, out_zp = quantizer.qparams()
    grad_out = torch.randn(n, out)

    leaves = [c.detach().float().requires_grad_() for c in codes]
    inputs = list(zip(leaves, scales, strict=True))
    ref = _reference(inputs, weight, bias, 127, out_scale, out_zp, relu == "fused", relu == "unfused")
    ref.backward(grad_out)
    expected = [t.grad.clone() for t in (weight, bias, *leaves)]
    weight.grad = bias.grad = None

    y = linear(codes, list(zip(scales, zero_points, strict=True)), weight, bias, LinearOptions(127, path, compile))
    got = quantize(y, out_scale, out_zp, QuantizeOptions(255, relu, dtype, compile))
    assert got.dtype == dtype
    assert torch.equal(got.float(), ref.detach())  # the same codes, bit for bit (also with int8 products)
    got.backward(grad_out.to(dtype))
    for g, e in zip((weight.grad, bias.grad, *(c.grad for c in codes)), expected, strict=True):
        if path.grad == "bf16":  # gradient products with bf16 operands: relative error of a few bf16 steps (2**-8)
            assert (g.float() - e).norm() <= 2**-6 * e.norm()
        else:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("compile", [False, True])
def test_observer_reads_the_batch_range_before_quantizing(compile):
    torch.manual_seed(1)
    layer = QuantLinear((3,), 4, QuantConfig(), relu=True).train()  # uninitialized observer: the batch sets it
    set_quant_state(layer, active=True, observe=True)
    set_train_kernels(layer, compile, False)
    x = QTensor(torch.randint(0, 256, (50, 3)).float(), torch.tensor(0.01), torch.tensor(0.0))
    y = layer.linear([x])
    out = layer(x)
    quantizer = layer.out_quant
    assert quantizer.min_val.item() == 0.0 and quantizer.max_val.item() == torch.relu(y).max().item()
    assert out.centered.max().item() == 255.0 and torch.equal(out.scale, quantizer.qparams()[0])


def test_inputs_without_grad_get_none():
    weight = torch.randn(3, 4, requires_grad=True)
    codes = torch.randint(0, 256, (5, 4)).float()
    y = linear([codes], [(torch.tensor(0.1), torch.tensor(0.0))], weight, torch.zeros(3), LinearOptions(127))
    y.sum().backward()
    assert weight.grad is not None and codes.grad is None


@pytest.mark.parametrize("path", _paths(), ids=lambda p: f"{p.product}-{p.grad}")
def test_fast_codes_product_is_exact_with_signed_inputs(path):
    """int8 units (oneDNN on CPU) take ``centered + zero_point`` as uint8: the product must equal the fp32 one."""
    torch.manual_seed(3)
    zero_point = torch.tensor(117.0)
    codes = torch.randint(0, 256, (1000, 63)).float() - zero_point
    weight = torch.randn(5, 63)
    args = ([codes], [(torch.tensor(0.03), zero_point)], weight, torch.randn(5))
    exact = linear(*args, LinearOptions(127))
    fast = linear(*args, LinearOptions(127, path))
    assert torch.equal(exact, fast)


def test_observer_is_not_updated_again_when_a_checkpointed_forward_is_recomputed():
    torch.manual_seed(2)
    layer = QuantLinear((3,), 4, QuantConfig(observer_momentum=0.5), relu=True).train()
    set_quant_state(layer, active=True, observe=True)
    weight_before = layer.weight.detach().clone()
    x = QTensor(torch.randint(0, 256, (50, 3)).float(), torch.tensor(0.01), torch.tensor(0.0))
    out = torch.utils.checkpoint.checkpoint(lambda c: layer(QTensor(c, x.scale, x.zero_point)).centered, x.centered,
                                            use_reentrant=False)  # fmt: skip
    after_forward = layer.out_quant.max_val.clone()
    out.sum().backward()  # recomputes the forward
    assert torch.equal(layer.out_quant.max_val, after_forward)
    assert torch.equal(layer.weight.detach(), weight_before) and layer.weight.grad is not None
