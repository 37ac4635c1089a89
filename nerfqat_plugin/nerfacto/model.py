"""nerfacto-qat: nerfstudio's ``NerfactoModel`` whose hash grids and MLPs are quantization-aware.

nerfstudio builds the model (its samplers, proposal networks, losses and defaults, with the PyTorch implementation
of its hash encoding and MLPs); then each hash grid becomes a ``QuantHashEncoding`` (``table_bits`` codes per
level, learned steps) and each MLP a ``QuantMLP`` (``quant``: w8a8 by default), starting from nerfstudio's own
initial values. With ``--pipeline.model.quant.enabled False`` the model computes what nerfstudio's nerfacto does
from the same start, value for value; with it, fake quantization runs from ``quant.quant_start_step`` on (fp32
before, as nerf-qat). tinycudann's fused hash grid and MLPs are not used: they cannot quantize what they gather.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Type

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.field_components.mlp import MLP, MLPWithHashEncoding
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from torch import Tensor, nn

from nerfqat_plugin.integer_export import linear_descriptions
from nerfqat_plugin.ndc import ndc_space
from nerfqat_plugin.nerfacto import export
from nerfqat_plugin.nerfacto.encoding import QuantHashEncoding
from nerfqat_plugin.offline import offline_lpips
from nerfqat_plugin.qat_callbacks import apply_schedule, schedule_callbacks
from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.dispatch import Kernel, MatmulMode
from nerfqat_plugin.quant.layers import set_quant_state, set_train_kernels
from nerfqat_plugin.quant.mlp import QuantMLP
from nerfqat_plugin.quant.table import QuantTable, table_qmax


@dataclass
class NerfactoQATModelConfig(NerfactoModelConfig):
    """nerfstudio's nerfacto settings, and how its hash grids and MLPs are quantized."""

    _target: Type = field(default_factory=lambda: NerfactoQATModel)
    implementation: Literal["tcnn", "torch"] = "torch"
    """Only 'torch': the quantized hash grids and MLPs are nerf-qat's PyTorch modules (tinycudann's fused ones cannot
    quantize the features they gather)."""
    quant: QuantConfig = field(default_factory=QuantConfig)
    """Quantization of the MLPs (weights, activations) and the QAT schedule, which the hash tables follow too."""
    table_bits: int = 8
    """Bits per hash-table feature (2..8): symmetric codes with a learned step per level."""
    quant_compile: bool = True
    """Fuse the MLPs' fake-quantization arithmetic with torch.compile (the same values; compiled on first use)."""
    quant_fast_matmul: MatmulMode = "auto"
    """How the fake-quantized MLP layers multiply (as nerf-qat's --pipeline.model.quant-fast-matmul)."""
    int8_weights: Optional[Path] = None
    """Integer export file to render from (ns-export-int8 sets it): the tables hold its codes times their steps and
    the MLPs run on its integer weights."""
    int8_kernel: Kernel = "auto"
    """Integer matmul of an export's MLPs (as nerf-qat's --pipeline.model.int8-kernel)."""
    int8_compile: bool = True
    """Fuse the integer layers' elementwise steps with torch.compile (as nerf-qat's --pipeline.model.int8-compile)."""
    input_range_per_level: bool = False
    """Quantize the hash features entering each MLP with a range per level (coarse levels' features are larger than
    fine ones'), rather than one range over all levels."""
    quantize: Literal["all", "tables", "mlps"] = "all"
    """What fake quantization covers once it starts: everything, or for an ablation the hash tables alone (fp32
    MLPs) or the MLPs alone (fp32 tables)."""

    def __post_init__(self) -> None:
        table_qmax(self.table_bits)  # 2..8, said here rather than at the first step


class NerfactoQATModel(NerfactoModel):
    """``NerfactoModel`` with fake-quantized hash grids and MLPs (see the module docstring)."""

    config: NerfactoQATModelConfig

    def populate_modules(self) -> None:
        cfg = self.config
        if cfg.implementation != "torch":
            raise ValueError(
                f"nerfacto-qat: --pipeline.model.implementation {cfg.implementation!r} is not supported: the quantized "
                "hash grids and MLPs are PyTorch modules (use torch)"
            )
        if cfg.predict_normals:
            raise ValueError(
                "nerfacto-qat: --pipeline.model.predict-normals is not supported (its MLP is not quantized)"
            )
        if ndc_space("auto", self.kwargs.get("metadata") or {}) is not None:
            raise ValueError(
                "nerfacto-qat renders in world space (nerfstudio's scene contraction), not in NDC: train it with "
                "llff-data --ndc False (nerfacto-qat's default)"
            )
        with offline_lpips():  # nerfstudio's LPIPS would download AlexNet here
            super().populate_modules()
        # the quantized modules copy nerfstudio's initial values; building them must not move the random stream,
        # so that training draws the same rays and samples as nerfstudio's nerfacto from the same seed
        with torch.random.fork_rng(devices=[]):
            self._quantize_modules()
        set_train_kernels(self, compile=cfg.quant_compile, matmul=cfg.quant_fast_matmul)
        if cfg.int8_weights is not None:
            self.load_export(Path(cfg.int8_weights))
        self.update_to_step(0)

    def _quantize_modules(self) -> None:
        """Each hash grid and MLP nerfstudio built, replaced by its quantized twin with the same values."""
        quant, bits = self.config.quant, self.config.table_bits
        f = self.field
        per_level = self.config.input_range_per_level
        f.mlp_base = quantized_hash_mlp(f.mlp_base, quant, bits, per_level)
        head_splits = [f.direction_encoding.get_out_dim(), f.geo_feat_dim]
        if f.embedding_appearance is not None:
            head_splits.append(f.appearance_embedding_dim)
        f.mlp_head = quantized_mlp(f.mlp_head, quant, head_splits)
        for network in self.proposal_networks:
            if network.use_linear:
                raise ValueError("nerfacto-qat: proposal networks with use_linear are not supported")
            encoding, mlp = network.mlp_base
            network.encoding = quantized_hash_encoding(encoding, int(network.max_res), bits)
            splits = _level_splits(network.encoding) if per_level else None
            network.mlp_base = nn.Sequential(network.encoding, quantized_mlp(mlp, quant, splits))

    def update_to_step(self, step: int) -> None:
        """The QAT schedule (nerf-qat's, ``qat_callbacks.apply_schedule``), for the tables and the MLPs alike; an
        export's model has nothing to schedule (its tables hold their values, its MLPs are integer)."""
        if self.config.int8_weights is not None:
            return
        apply_schedule(self, self.config.quant, step)
        if self.config.quantize != "all":  # an ablation: the other kind computes in fp32
            kept = QuantTable if self.config.quantize == "tables" else QuantMLP
            for module in self.modules():
                if isinstance(module, (QuantTable, QuantMLP)) and not isinstance(module, kept):
                    set_quant_state(module, active=False, observe=True)

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        return schedule_callbacks(self) + super().get_training_callbacks(training_callback_attributes)

    # --- the integer export (integer_export.IntegerExport; the format is nerfacto/export.py's) ---

    def export_refusal(self) -> Optional[str]:
        if self.config.quantize == "all":
            return None
        return (
            f"trained with --pipeline.model.quantize {self.config.quantize} (an ablation): only a run that "
            "quantizes tables and MLPs exports to integers"
        )

    def export_tensors(self) -> Dict[str, Tensor]:
        return export.export_tensors(self)

    def export_metadata(self) -> Dict[str, object]:
        return {"architecture": export.architecture(self.config), export.TABLE_ROWS: export.table_rows_metadata()}

    def export_descriptions(self) -> Dict[str, Tuple[str, str]]:
        mlps = {name + ".": mlp for name, mlp in export.quantized_parts(self)[1].items()}
        return {**export.table_summary(self), **linear_descriptions(mlps, self.config.quant.weight_bits)}

    def fp32_bytes(self) -> float:
        return float(export.fp32_bytes(self))

    def load_export(self, path: Path) -> None:
        export.load_export(self, path, self.config.int8_kernel, self.config.int8_compile)


def quantized_mlp(mlp: MLP, quant: QuantConfig, in_splits: Optional[Sequence[int]] = None) -> QuantMLP:
    """A ``QuantMLP`` shaped as nerfstudio's torch ``mlp`` (ReLU between layers), starting from its weights."""
    if mlp.tcnn_encoding is not None or not hasattr(mlp, "layers"):
        raise ValueError("nerfacto-qat: an MLP built by tinycudann cannot be quantized (use implementation torch)")
    if mlp._skip_connections or not isinstance(mlp.activation, nn.ReLU):
        raise ValueError("nerfacto-qat: only MLPs without skip connections and with ReLU activations are quantized")
    out = QuantMLP(in_splits or (mlp.in_dim,), mlp.num_layers, mlp.layer_width, mlp.out_dim, quant, mlp.out_activation)
    for ours, theirs in zip(out.layers, mlp.layers, strict=True):
        ours.weight.data.copy_(theirs.weight.data)
        ours.bias.data.copy_(theirs.bias.data)
    return out


def quantized_hash_encoding(encoding: HashEncoding, max_res: int, bits: int) -> QuantHashEncoding:
    """A ``QuantHashEncoding`` with the levels of nerfstudio's torch ``encoding``, starting from its table."""
    if encoding.tcnn_encoding is not None:
        raise ValueError("nerfacto-qat: a tinycudann hash grid cannot be quantized (use implementation torch)")
    out = QuantHashEncoding(
        num_levels=encoding.num_levels,
        min_res=encoding.min_res,
        max_res=max_res,
        log2_hashmap_size=encoding.log2_hashmap_size,
        features_per_level=encoding.features_per_level,
        hash_init_scale=encoding.hash_init_scale,
        bits=bits,
    )
    if not bool((out.scalings == encoding.scalings).all()):
        raise ValueError(f"nerfacto-qat: hash grid levels {out.scalings.tolist()} != {encoding.scalings.tolist()}")
    out.table.weight.data.copy_(encoding.hash_table.data)
    return out


def _level_splits(encoding: HashEncoding) -> List[int]:
    """The hash encoding's output as one part per level (its features are level-major)."""
    return [encoding.features_per_level] * encoding.num_levels


def quantized_hash_mlp(
    module: MLPWithHashEncoding, quant: QuantConfig, bits: int, per_level: bool = False
) -> nn.Sequential:
    """nerfstudio's torch ``MLPWithHashEncoding`` (a hash grid, then an MLP) with both quantized."""
    if module.tcnn_encoding is not None or not hasattr(module, "model"):
        raise ValueError("nerfacto-qat: a tinycudann hash grid cannot be quantized (use implementation torch)")
    encoding, mlp = module.model
    grid = quantized_hash_encoding(encoding, module.max_res, bits)
    return nn.Sequential(grid, quantized_mlp(mlp, quant, _level_splits(grid) if per_level else None))
