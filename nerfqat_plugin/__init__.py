"""nerf-qat: quantization-aware training of vanilla NeRF as a nerfstudio plugin."""

__version__ = "0.1.0"
