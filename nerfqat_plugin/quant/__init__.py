"""Quantization core, independent of NeRF and nerfstudio: spec, fake quantizers, layers, packing."""

from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.fake_quant import QTensor
from nerfqat_plugin.quant.layers import ActQuantizer, QuantLinear, set_quant_state

__all__ = ["ActQuantizer", "QTensor", "QuantConfig", "QuantLinear", "set_quant_state"]
