"""Quantization core, independent of NeRF and nerfstudio: spec, rounding, fake quantizers, layers, integer kernels."""

from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.layers import ActQuantizer, QuantLinear, set_quant_state, set_train_kernels
from nerfqat_plugin.quant.rounding import QTensor

__all__ = ["ActQuantizer", "QTensor", "QuantConfig", "QuantLinear", "set_quant_state", "set_train_kernels"]
