"""Model size: parameter count, fp32 bytes, and bytes as the integer export stores the tensors (Linear layers,
their activation ranges, and quantized tables)."""

from __future__ import annotations

from torch import nn

from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.int8 import IntActQuantizer, IntLinear
from nerfqat_plugin.quant.layers import ActQuantizer, QuantLinear
from nerfqat_plugin.quant.pack import packed_nbytes
from nerfqat_plugin.quant.table import QuantTable

SCALE_BYTES = 2
"""Weight scales are bfloat16 values (``weight_scale`` rounds them), stored in 2 bytes each."""
BIAS_BYTES = 4
"""Biases stay float32."""
ACT_QPARAM_BYTES = 8
"""Activation scale and zero point, float32 each."""
STEP_BYTES = 4
"""A table's steps, one per group of rows, float32."""


def _linear_shapes(module: nn.Module):
    for m in module.modules():
        if isinstance(m, QuantLinear):
            yield tuple(m.weight.shape)
        elif isinstance(m, IntLinear):
            yield tuple(m.weight_codes.shape)


def _tables(module: nn.Module):
    return [m for m in module.modules() if isinstance(m, QuantTable)]


def num_params(module: nn.Module) -> int:
    """Weights and biases of the Linear layers (trained or integer) and the entries of quantized tables."""
    return sum(o * i + o for o, i in _linear_shapes(module)) + sum(t.weight.numel() for t in _tables(module))


def fp32_nbytes(module: nn.Module) -> int:
    """Bytes of those parameters in float32."""
    return 4 * num_params(module)


def quantized_nbytes(module: nn.Module, config: QuantConfig) -> int:
    """Bytes of the tensors the integer export writes for ``module`` (without the file header)."""
    total = sum(
        packed_nbytes(o * i, config.weight_bits) + o * (SCALE_BYTES + BIAS_BYTES) for o, i in _linear_shapes(module)
    )
    total += sum(packed_nbytes(t.weight.numel(), t.bits) + t.groups * STEP_BYTES for t in _tables(module))
    for m in module.modules():
        if isinstance(m, (ActQuantizer, IntActQuantizer)) or (isinstance(m, IntLinear) and m.out_scale is not None):
            total += ACT_QPARAM_BYTES
    return total
