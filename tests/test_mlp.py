"""The NeRF MLP: architecture, parameter count, and quantization off == plain fp32."""

import torch
import torch.nn.functional as F

from nerfqat_plugin.nerf.mlp import NeRFMLP
from nerfqat_plugin.quant import QuantConfig, set_quant_state
from nerfqat_plugin.quant.size import quantized_nbytes


def test_default_network_has_595844_parameters():
    mlp = NeRFMLP(63, 27, QuantConfig())
    assert sum(p.numel() for p in mlp.parameters()) == 595_844
    assert mlp.trunk[4].in_splits == (256, 63)  # the encoded position re-enters at the 5th layer


def test_quantized_size_of_default_network():
    mlp = NeRFMLP(63, 27, QuantConfig())
    # 593,408 weights at 1 byte + 2,436 channels x (2 B scale + 4 B bias) + 12 activation quantizers x 8 B
    assert quantized_nbytes(mlp, QuantConfig()) == 593_408 + 2_436 * 6 + 12 * 8
    assert quantized_nbytes(mlp, QuantConfig(weight_bits=4)) == 593_408 // 2 + 2_436 * 6 + 12 * 8


def _plain_reference(mlp: NeRFMLP, pos: torch.Tensor, dirs: torch.Tensor):
    h = pos
    for i, layer in enumerate(mlp.trunk):
        inp = torch.cat([h, pos], -1) if i == mlp.skip_layer else h
        h = torch.relu(F.linear(inp, layer.weight, layer.bias))
    raw = F.linear(h, mlp.density_head.weight, mlp.density_head.bias)
    feat = F.linear(h, mlp.feature.weight, mlp.feature.bias)
    v = torch.relu(F.linear(torch.cat([feat, dirs], -1), mlp.view.weight, mlp.view.bias))
    return raw, torch.sigmoid(F.linear(v, mlp.rgb_head.weight, mlp.rgb_head.bias))


def test_quantization_disabled_equals_plain_fp32():
    torch.manual_seed(0)
    mlp = NeRFMLP(63, 27, QuantConfig(enabled=False), num_layers=6, layer_width=32, skip_layer=3).train()
    set_quant_state(mlp, active=False, observe=True)
    pos, dirs = torch.randn(100, 63), torch.randn(100, 27)
    raw, h = mlp.density(pos)
    rgb = mlp.color(h, dirs)
    raw_ref, rgb_ref = _plain_reference(mlp, pos, dirs)
    assert torch.equal(raw, raw_ref) and torch.equal(rgb, rgb_ref)


def test_quantization_enabled_stays_close_to_fp32_and_differs_from_it():
    torch.manual_seed(0)
    mlp = NeRFMLP(63, 27, QuantConfig(), num_layers=4, layer_width=64, skip_layer=2).train()
    pos, dirs = torch.rand(2000, 63) * 2 - 1, torch.rand(2000, 27) * 2 - 1
    set_quant_state(mlp, active=False, observe=True)
    raw_ref, h = mlp.density(pos)
    rgb_ref = mlp.color(h, dirs)  # observers see the fp32 ranges
    set_quant_state(mlp, active=True, observe=False)
    raw, h = mlp.density(pos)
    rgb = mlp.color(h, dirs)
    assert not torch.equal(rgb, rgb_ref)
    assert (rgb - rgb_ref).abs().max() < 0.02
    assert (raw - raw_ref).abs().max() < 0.05 * raw_ref.abs().max()
