"""Model size in bytes: fp32, and as the integer export stores it."""

from __future__ import annotations

from torch import nn

from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.layers import ActQuantizer, QuantLinear
from nerfqat_plugin.quant.pack import packed_nbytes

SCALE_BYTES = 2
"""Weight scales are bfloat16 values (``weight_scale`` rounds them), stored in 2 bytes each."""
BIAS_BYTES = 4
"""Biases stay float32."""
ACT_QPARAM_BYTES = 8
"""Activation scale and zero point, float32 each."""


def fp32_nbytes(module: nn.Module) -> int:
    """Bytes of the module's parameters in float32."""
    return 4 * sum(p.numel() for p in module.parameters())


def quantized_nbytes(module: nn.Module, config: QuantConfig) -> int:
    """Bytes of the tensors the integer export writes for ``module`` (without the file header)."""
    total = 0
    for m in module.modules():
        if isinstance(m, QuantLinear):
            out_features, in_features = m.weight.shape
            total += packed_nbytes(out_features * in_features, config.weight_bits)
            total += out_features * (SCALE_BYTES + BIAS_BYTES)
        elif isinstance(m, ActQuantizer):
            total += ACT_QPARAM_BYTES
    return total
