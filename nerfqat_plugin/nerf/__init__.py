"""nerf-qat: the original NeRF MLP, quantization-aware, with nerfstudio's samplers and renderers."""
