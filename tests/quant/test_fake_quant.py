"""Quantize/dequantize arithmetic on tiny hand-computed tensors."""

import torch

from nerfqat_plugin.quant.ops import QuantizeOptions, quantize
from nerfqat_plugin.quant.rounding import (
    activation_qparams,
    grid,
    round_up_to_bf16,
    weight_codes,
    weight_scale,
)


def test_activation_qparams_signed_range_8bit():
    # range [-1, 3] over 255 steps: scale 4/255, zero point round(1 / (4/255)) = round(63.75) = 64
    scale, zp = activation_qparams(torch.tensor(-1.0), torch.tensor(3.0), 255)
    assert torch.isclose(scale, torch.tensor(4.0 / 255))
    assert zp.item() == 64


def test_activation_qparams_after_relu_has_zero_point_zero():
    scale, zp = activation_qparams(torch.tensor(0.0), torch.tensor(2.55), 255)
    assert zp.item() == 0
    assert torch.isclose(scale, torch.tensor(0.01))


def test_activation_range_always_contains_zero():
    # a strictly positive range is widened to [0, max] so that 0 is a code
    scale, zp = activation_qparams(torch.tensor(1.0), torch.tensor(2.0), 15)
    assert zp.item() == 0 and torch.isclose(scale, torch.tensor(2.0 / 15))


def test_round_codes_8bit_clamps_both_ends():
    scale, zp = activation_qparams(torch.tensor(-1.0), torch.tensor(3.0), 255)
    x = torch.tensor([-2.0, -1.0, 0.0, 3.0, 10.0])
    # x/scale = [-127.5, -63.75, 0, 191.25, 637.5] -> round + 64 -> [-64 -> 0, 0, 64, 255, 702 -> 255]
    assert grid(x, scale, zp, 0, 255).tolist() == [0.0, 0.0, 64.0, 255.0, 255.0]


def test_round_codes_4bit_rounds_half_to_even():
    scale, zp = torch.tensor(0.25), torch.tensor(0.0)
    x = torch.tensor([0.125, 0.375, 0.6, 5.0])  # /0.25 = [0.5, 1.5, 2.4, 20]
    assert grid(x, scale, zp, 0, 15).tolist() == [0.0, 2.0, 2.0, 15.0]


def test_codes_take_the_reciprocal_of_the_scale_then_the_zero_point_then_round():
    """oneDNN's order (so its fused kernel gives training's codes): x * fp32(1 / scale) + zero_point, rounded."""
    x, scale = torch.tensor([14.549999237060547, 12.149999618530273]), torch.tensor(0.1)
    # x / 0.1 = 145.49998..., 121.49999... (round down); x * fp32(1 / 0.1) = 145.5, 121.5 exactly (half to even)
    assert grid(x, scale, torch.tensor(0.0), 0, 255).tolist() == [146.0, 122.0]
    # the zero point before the rounding: 0.5 + 1 = 1.5 -> 2, 1.5 + 1 = 2.5 -> 2, -0.5 + 1 = 0.5 -> 0
    # (round(x) + 1 would give 1, 3, 1)
    assert grid(torch.tensor([0.5, 1.5, -0.5]), torch.tensor(1.0), torch.tensor(1.0), 0, 255).tolist() == [2, 2, 0]


def test_round_codes_2bit():
    scale, zp = torch.tensor(1.0), torch.tensor(1.0)  # codes 0..3 represent -1..2
    x = torch.tensor([-5.0, -0.6, 0.4, 1.4, 9.0])
    assert (grid(x, scale, zp, 0, 3) - zp).tolist() == [-1.0, -1.0, 0.0, 1.0, 2.0]


def test_weight_scale_is_per_output_channel_and_exact_for_powers_of_two():
    w = torch.tensor([[0.5, -1.0, 0.25], [2.0, 1.0, -0.5]])
    assert weight_scale(w, 1).tolist() == [1.0, 2.0]  # 2 bits: codes in [-1, 1]
    codes = weight_codes(w, weight_scale(w, 1), 1)
    assert codes.tolist() == [[0.0, -1.0, 0.0], [1.0, 0.0, -0.0]]
    # 4 bits, qmax 7: scale 1/7 and 2/7 rounded up to bfloat16
    s4 = weight_scale(w, 7)
    assert torch.all(s4 >= torch.tensor([1 / 7, 2 / 7])) and torch.all(s4 < torch.tensor([1 / 7, 2 / 7]) * 1.008)
    assert weight_codes(w, s4, 7).abs().max() <= 7


def test_weight_scale_rounds_up_to_bfloat16_and_never_clips():
    torch.manual_seed(0)
    w = torch.randn(64, 32)
    s = weight_scale(w, 127)
    assert torch.equal(s, s.to(torch.bfloat16).float())
    exact = w.abs().amax(1) / 127
    assert torch.all(s >= exact) and torch.all(s <= exact * (1 + 2**-7))
    assert weight_codes(w, s, 127).abs().max() <= 127


def test_round_up_to_bf16_hand_values():
    x = torch.tensor([1.0, 1.0 + 2**-9, 3.0])
    # 1 is a bf16 value; 1 + 2^-9 lies between 1 and 1 + 2^-7 and goes up; 3 is exact
    assert round_up_to_bf16(x).tolist() == [1.0, 1.0 + 2**-7, 3.0]


def test_ste_gradient_is_one_over_scale_inside_and_zero_when_clipped():
    scale, zp = torch.tensor(0.5), torch.tensor(2.0)  # 2-bit codes 0..3 cover [-1, 0.5]
    x = torch.tensor([-3.0, -0.6, 0.0, 0.4, 2.0], requires_grad=True)
    codes = quantize(x, scale, zp, QuantizeOptions(3))
    assert codes.tolist() == [-2.0, -1.0, 0.0, 1.0, 1.0]
    codes.sum().backward()
    assert x.grad.tolist() == [0.0, 2.0, 2.0, 2.0, 0.0]


def test_fake_quantized_value_is_codes_times_scale():
    scale, zp = activation_qparams(torch.tensor(-1.0), torch.tensor(3.0), 255)
    x = torch.linspace(-1, 3, 101)
    fq = quantize(x, scale, zp, QuantizeOptions(255)) * scale
    assert (fq - x).abs().max() <= scale / 2 + 1e-6
