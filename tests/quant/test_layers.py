"""Activation observers, the quantized Linear (fused and unfused), and the on/off switch."""

import pytest
import torch
import torch.nn.functional as F

from nerfqat_plugin.quant import ActQuantizer, QTensor, QuantConfig, QuantLinear, set_quant_state
from nerfqat_plugin.quant.rounding import weight_codes, weight_scale


def test_observer_first_batch_sets_range_then_moves_by_momentum():
    q = ActQuantizer(QuantConfig(observer_momentum=0.25)).train()
    q(torch.tensor([-1.0, 2.0]))
    assert (q.min_val.item(), q.max_val.item()) == (-1.0, 2.0)
    q(torch.tensor([-5.0, 6.0]))
    # min: -1 + 0.25 * (-5 - -1) = -2 ; max: 2 + 0.25 * (6 - 2) = 3
    assert (q.min_val.item(), q.max_val.item()) == (-2.0, 3.0)


def test_observer_frozen_and_eval_mode_do_not_move():
    q = ActQuantizer(QuantConfig()).train()
    q(torch.tensor([0.0, 1.0]))
    set_quant_state(q, active=True, observe=False)
    q(torch.tensor([-9.0, 9.0]))
    q.eval()
    set_quant_state(q, active=True, observe=True)
    q(torch.tensor([-9.0, 9.0]))
    assert (q.min_val.item(), q.max_val.item()) == (0.0, 1.0)


def test_inactive_quantizer_passes_floats_through_but_still_observes():
    q = ActQuantizer(QuantConfig()).train()
    x = torch.tensor([-1.0, 0.3, 2.0])
    assert q(x) is x
    assert q.max_val.item() == 2.0


def _layer(fused: bool, bits: int = 8) -> QuantLinear:
    torch.manual_seed(0)
    layer = QuantLinear((4,), 16, QuantConfig(fused=fused, activation_bits=bits), relu=True).train()
    set_quant_state(layer, active=True, observe=True)
    return layer


def _input(n: int = 512) -> QTensor:
    torch.manual_seed(1)
    q = ActQuantizer(QuantConfig()).train()
    set_quant_state(q, active=True, observe=True)
    return q(torch.randn(n, 4))


def test_fused_block_quantizes_relu_output_over_zero_to_max():
    layer, x = _layer(fused=True), _input()
    y = layer(x)
    assert isinstance(y, QTensor)
    assert layer.out_quant.min_val.item() == 0.0  # the observer saw the ReLU output
    assert y.centered.min() >= 0 and y.centered.max() <= 255


def test_unfused_block_wastes_codes_on_the_negative_range():
    x = _input()
    fused, unfused = _layer(fused=True), _layer(fused=False)
    yf, yu = fused(x), unfused(x)
    reference = torch.relu(fused.linear([x]))  # same weights and input: exact float Linear+ReLU
    lo, hi = unfused.out_quant.min_val, unfused.out_quant.max_val
    assert lo < 0
    # stated difference: the unfused step is (max - min)/255, the fused one max/255
    assert torch.isclose(yu.scale / yf.scale, (hi - lo) / hi)
    err_f = (yf.dequantize() - reference).abs().max()
    err_u = (yu.dequantize() - reference).abs().max()
    assert err_f <= yf.scale / 2 * 1.001 and err_u <= yu.scale / 2 * 1.001
    assert err_u > err_f
    # unfused: after the ReLU the codes stop at zero (the zero point)
    assert yu.centered.min() == 0


def test_quantized_linear_equals_dequantized_float_reference():
    layer, x = _layer(fused=True), _input()
    s = weight_scale(layer.weight, 127)
    w_fq = weight_codes(layer.weight, s, 127) * s[:, None]
    expected = F.linear(x.dequantize(), w_fq, layer.bias)
    assert torch.allclose(layer.linear([x]), expected, atol=1e-5, rtol=1e-5)


def test_code_products_are_exact_integers_in_fp32():
    layer, x = _layer(fused=True), _input()
    w = weight_codes(layer.weight, weight_scale(layer.weight, 127), 127)
    acc32 = x.centered @ w.T
    acc64 = x.centered.double() @ w.double().T
    assert torch.equal(acc32.double(), acc64)


def test_two_inputs_act_as_their_concatenation():
    torch.manual_seed(0)
    layer = QuantLinear((3, 2), 5, QuantConfig())
    a, b = torch.randn(7, 3), torch.randn(7, 2)
    assert torch.equal(layer(a, b), F.linear(torch.cat([a, b], -1), layer.weight, layer.bias))
    with pytest.raises(ValueError, match="expects 2 inputs"):
        layer(a)


def test_gradients_flow_to_weights_and_inputs_through_the_quantizers():
    layer = _layer(fused=True)
    q = ActQuantizer(QuantConfig()).train()
    set_quant_state(q, active=True, observe=True)
    x = torch.randn(64, 4, requires_grad=True)
    layer(q(x)).dequantize().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_quantized_layer_needs_quantized_input():
    layer = _layer(fused=True)
    with pytest.raises(TypeError, match="quantized input expected"):
        layer(torch.randn(2, 4))
