"""nerfacto-qat: nerfstudio's nerfacto with quantization-aware hash grids and MLPs."""
