"""What a method's model gives ns-export-int8 and takes back from its file: one small protocol for every method.

``ns-export-int8`` (``export``) writes any model that implements ``IntegerExport``, and a model whose config names
an export file (``--pipeline.model.int8-weights``) becomes its integer twin through ``load_export``; the container
(``int8_format``: safetensors, metadata, entropy coding) and the scene record are shared. nerf-qat
(``model.NeRFQATModel``) and nerfacto-qat (``nerfacto.model.NerfactoQATModel``) implement it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Protocol, Tuple, runtime_checkable

from torch import Tensor, nn

from nerfqat_plugin.quant.layers import QuantLinear


@runtime_checkable
class IntegerExport(Protocol):
    """A trained model's integer export: its tensors out, its metadata, its bytes, and its tensors back in."""

    def export_refusal(self) -> Optional[str]:
        """Why this trained model cannot be exported (a sentence), or None."""
        ...

    def export_tensors(self) -> Dict[str, Tensor]:
        """The file's tensors (CPU, contiguous), by name."""
        ...

    def export_metadata(self) -> Dict[str, object]:
        """The file's method metadata: ``architecture`` (what fixes the tensors, checked on loading) and whatever
        else the method stores (nerf-qat: ``render``)."""
        ...

    def export_descriptions(self) -> Dict[str, Tuple[str, str]]:
        """For the exporter's table: tensor name -> (shape, what it holds) where dtype and shape do not tell."""
        ...

    def fp32_bytes(self) -> float:
        """Bytes of the rendered parameters in fp32 (what the export is compared with)."""
        ...

    def load_export(self, path: Path) -> None:
        """Become the integer twin of the model ``path`` was exported from (the file checked first;
        ``int8_format.Int8ExportError`` naming it if it does not fit this config)."""
        ...


def linear_descriptions(mlps: Dict[str, nn.Module], bits: int) -> Dict[str, Tuple[str, str]]:
    """The packed weight tensors of the quantized Linear layers of ``mlps`` (by tensor-name prefix)."""
    described: Dict[str, Tuple[str, str]] = {}
    for prefix, mlp in mlps.items():
        for name, m in mlp.named_modules():
            if isinstance(m, QuantLinear):
                described[f"{prefix}{name}.weight"] = ("x".join(map(str, m.weight.shape)), f"{bits}-bit packed")
    return described
