"""nerf-qat: quantization-aware training of NeRF models (vanilla NeRF, nerfacto) as a nerfstudio plugin.

Layout: ``quant`` (the quantization core, which knows nothing of NeRF), one package per method (``nerf``,
``nerfacto``), and what the methods share at the top (data, the export container and command, the QAT schedule).
"""

from nerfqat_plugin import moved

moved.install()  # configs saved before the package split name the old module paths

__version__ = "0.2.0"
