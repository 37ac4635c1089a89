"""The fused autograd nodes against a reference written with plain autograd, eager and compiled."""

import pytest
import torch

from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.fake_quant import weight_scale
from nerfqat_plugin.quant.layers import ActQuantizer
from nerfqat_plugin.quant.ops import OutputQuant, quant_linear


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


@pytest.mark.parametrize("compile,fast", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("mode", ["fused", "unfused", "signed"])
def test_linear_and_quantize_match_plain_autograd(compile, fast, mode):
    torch.manual_seed(0)
    n, widths, out = 300, (6, 5), 7
    relu_before, relu_after = mode == "fused", mode == "unfused"
    weight = torch.randn(out, sum(widths), requires_grad=True)
    bias = torch.randn(out, requires_grad=True)
    dtype = torch.bfloat16 if fast else torch.float32
    codes = [torch.randint(0, 256, (n, w)).to(dtype).requires_grad_() for w in widths]
    scales = [torch.tensor(0.02), torch.tensor(0.05)]
    zero_points = [torch.tensor(0.0), torch.tensor(0.0)]
    quantizer = _quantizer(0.0 if mode == "fused" else -3.0, 4.0)
    out_scale, out_zp = quantizer.qparams()
    grad_out = torch.randn(n, out)

    leaves = [c.detach().float().requires_grad_() for c in codes]
    inputs = list(zip(leaves, scales, strict=True))
    ref = _reference(inputs, weight, bias, 127, out_scale, out_zp, relu_before, relu_after)
    ref.backward(grad_out)
    expected = [t.grad.clone() for t in (weight, bias, *leaves)]
    weight.grad = bias.grad = None

    spec = OutputQuant(quantizer, False, relu_before, relu_after)
    got, scale, zp = quant_linear(codes, scales, zero_points, weight, bias, 127, spec, compile, fast)
    assert got.dtype == dtype and torch.equal(scale, out_scale) and torch.equal(zp, out_zp)
    assert torch.equal(got.float(), ref.detach())  # the same codes, bit for bit (also with int8 products)
    got.backward(grad_out.to(dtype))
    for g, e in zip((weight.grad, bias.grad, *(c.grad for c in codes)), expected, strict=True):
        if fast:  # gradient products with bf16 operands: relative error of a few bf16 steps (2**-8)
            assert (g.float() - e).norm() <= 2**-6 * e.norm()
        else:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("compile", [False, True])
def test_observer_reads_the_batch_range_before_quantizing(compile):
    torch.manual_seed(1)
    quantizer = ActQuantizer(QuantConfig())  # uninitialized: the first batch sets the range
    weight, bias = torch.randn(4, 3), torch.randn(4)
    codes = torch.randint(0, 256, (50, 3)).float()
    y = quant_linear([codes], [torch.tensor(0.01)], [None], weight, bias, 127, None, compile)
    out, scale, _ = quant_linear(
        [codes], [torch.tensor(0.01)], [None], weight, bias, 127, OutputQuant(quantizer, True, True, False), compile
    )
    assert quantizer.min_val.item() == 0.0 and quantizer.max_val.item() == torch.relu(y).max().item()
    assert out.max().item() == 255.0 and torch.equal(scale, quantizer.qparams()[0])


def test_inputs_without_grad_get_none():
    weight = torch.randn(3, 4, requires_grad=True)
    codes = torch.randint(0, 256, (5, 4)).float()
    y = quant_linear([codes], [torch.tensor(0.1)], [None], weight, torch.zeros(3), 127)
    y.sum().backward()
    assert weight.grad is not None and codes.grad is None


def test_fast_codes_product_is_exact_with_signed_inputs():
    """int8 units (oneDNN on CPU) take ``codes + zero_point`` as uint8: the product must equal the fp32 one."""
    torch.manual_seed(3)
    zero_point = torch.tensor(117.0)
    codes = torch.randint(0, 256, (1000, 63)).float() - zero_point
    weight = torch.randn(5, 63)
    args = ([codes], [torch.tensor(0.03)], [zero_point], weight, torch.randn(5), 127, None)
    exact = quant_linear(*args, False, False)
    fast = quant_linear(*args, False, True)
    assert torch.equal(exact, fast)
