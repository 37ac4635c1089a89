"""The integer export of a nerfacto-qat run, and loading it back into a ``NerfactoQATModel`` that renders from it.

Tensors (in ``int8_format``'s file; every name is the module's path in the model):

- each hash table ``<table>`` (the field's grid, the proposal networks'): ``<table>.codes`` uint8, the codes
  ``+ qmax`` packed ``table_bits`` bits each, row-major ``[levels * rows_per_level, features]``; ``<table>.steps``
  float32 ``[levels]``: an entry is ``code * steps[level]``;
- each MLP ``<mlp>`` (the field's geometry MLP and colour head, each proposal network's): nerf-qat's integer Linear
  tensors (``int8_format.mlp_tensors``: packed weight codes, bf16 scales, fp32 biases, activation ranges);
- ``field.appearance_mean`` float32 ``[appearance_embed_dim]``: the one appearance vector rendering uses
  (nerfstudio's field renders with the mean of the per-image embeddings), when the model has an appearance
  embedding and renders with its mean.

Loaded, each table holds ``code * step`` in fp32, the product training's fake quantization formed, and reads it
without quantizing again; the MLPs are integer (``quant.int8``), reproducing training's activation codes; so the
export renders what the fake-quantized run rendered, value for value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import Tensor, nn

from nerfqat_plugin.int8_format import Int8ExportError, check_quant, decode, load_mlp_tensors, mlp_tensors, read_file
from nerfqat_plugin.quant.dispatch import Kernel
from nerfqat_plugin.quant.int8 import set_kernel
from nerfqat_plugin.quant.mlp import QuantMLP
from nerfqat_plugin.quant.pack import pack_bits, packed_nbytes, unpack_bits
from nerfqat_plugin.quant.table import QuantTable

METHOD = "nerfacto-qat"
ARCHITECTURE_FIELDS = (
    "num_levels",
    "base_res",
    "max_res",
    "log2_hashmap_size",
    "features_per_level",
    "hidden_dim",
    "hidden_dim_color",
    "use_appearance_embedding",
    "appearance_embed_dim",
    "use_average_appearance_embedding",
    "num_proposal_iterations",
    "use_same_proposal_network",
    "proposal_net_args_list",
    "table_bits",
    "input_range_per_level",
)
"""Model config fields that fix the export's tensors (recorded in the file, checked when it is loaded)."""
APPEARANCE = "field.appearance_mean"


def architecture(config: Any) -> Dict[str, object]:
    """What fixes a nerfacto-qat export's tensors: the method and its ``ARCHITECTURE_FIELDS``."""
    arch: Dict[str, object] = {"method": METHOD}
    for name in ARCHITECTURE_FIELDS:
        value = getattr(config, name)
        arch[name] = [dict(sorted(a.items())) for a in value] if name == "proposal_net_args_list" else value
    return arch


def quantized_parts(model: nn.Module) -> Tuple[Dict[str, QuantTable], Dict[str, QuantMLP]]:
    """The model's hash tables and MLPs by their path (a module registered twice, as a proposal network's
    encoding, once)."""
    tables: Dict[str, QuantTable] = {}
    mlps: Dict[str, QuantMLP] = {}
    for name, module in model.named_modules():  # named_modules lists a shared module once
        if isinstance(module, QuantTable):
            tables[name] = module
        elif isinstance(module, QuantMLP):
            mlps[name] = module
    return tables, mlps


def _renders_with_mean_appearance(model: nn.Module) -> bool:
    return model.field.embedding_appearance is not None and model.config.use_average_appearance_embedding


@torch.no_grad()
def export_tensors(model: nn.Module) -> Dict[str, Tensor]:
    """The file's tensors for a trained (fake-quantized) nerfacto-qat model."""
    tables, mlps = quantized_parts(model)
    out: Dict[str, Tensor] = {}
    for name, table in tables.items():
        codes, steps = table.codes()
        out[f"{name}.codes"] = pack_bits(codes.to(torch.int64) + table.qmax, table.bits)
        out[f"{name}.steps"] = steps.float()
    for name, mlp in mlps.items():
        out.update(mlp_tensors(mlp, f"{name}.", model.config.quant))
    if _renders_with_mean_appearance(model):
        out[APPEARANCE] = model.field.embedding_appearance.mean(dim=0).float()
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of the fields' fp32 parameters (hash tables, MLPs, appearance embedding; the camera optimizer's
    pose corrections are not rendered and left out)."""
    parts = [model.field, model.proposal_networks]
    return 4 * sum(p.numel() for part in parts for p in part.parameters())


class MeanAppearance(nn.Module):
    """An export's appearance embedding: the one vector rendering uses (nerfstudio's field asks for the mean)."""

    def __init__(self, vector: Tensor) -> None:
        super().__init__()
        self.register_buffer("vector", vector.clone())

    def mean(self, dim: int = 0) -> Tensor:
        return self.vector

    def forward(self, camera_indices: Tensor) -> Tensor:
        return self.vector.expand(*camera_indices.shape, -1)


@torch.no_grad()
def load_export(model: nn.Module, path: Path, kernel: Kernel, compile: bool) -> None:
    """Make a freshly built nerfacto-qat model render from the export file ``path``: its tables hold the codes
    times their steps, its MLPs become integer; ``Int8ExportError`` naming the file if it was written for another
    architecture or quantization, or holds other tensors."""
    tensors, metadata = read_file(path)
    found = decode(metadata, "architecture")
    expected_arch = architecture(model.config)
    if found != expected_arch:
        differ = sorted(k for k in set(found) | set(expected_arch) if found.get(k) != expected_arch.get(k))
        detail = ", ".join(f"{k} {found.get(k)!r} in the file, {expected_arch.get(k)!r} in the config" for k in differ)
        raise Int8ExportError(f"{path}: written for another nerfacto-qat architecture: {detail}")
    quant = check_quant(metadata, model.config.quant, path)
    tables, mlps = quantized_parts(model)
    expected = set(export_tensors_names(model))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise Int8ExportError(
            f"{path}: tensors differ from the config's model (missing {missing[:3]}, extra {extra[:3]})"
        )
    for name, table in tables.items():  # check every table before changing any
        rows = table.groups * table.rows_per_group
        for key, shape in ((f"{name}.codes", (packed_nbytes(rows * table.features, table.bits),)),
                           (f"{name}.steps", (table.groups,))):  # fmt: skip
            if tuple(tensors[key].shape) != shape:
                raise Int8ExportError(
                    f"{path}: {key} has shape {tuple(tensors[key].shape)}, the config's table needs {shape} "
                    f"({table.groups} levels x {table.rows_per_group} rows x {table.features} features, "
                    f"{table.bits} bits)"
                )
        steps = tensors[f"{name}.steps"]
        if not bool(torch.isfinite(steps).all() & (steps > 0).all()):
            raise Int8ExportError(f"{path}: {name}.steps holds steps that are not positive and finite")
    for name, table in tables.items():
        rows = table.groups * table.rows_per_group
        codes = unpack_bits(tensors[f"{name}.codes"], table.bits, rows * table.features) - table.qmax
        steps = tensors[f"{name}.steps"].to(table.weight.device)
        per_row = steps.repeat_interleave(table.rows_per_group)[:, None]
        table.weight.copy_(codes.reshape(rows, table.features).float().to(per_row.device) * per_row)
        table.log_step.copy_(torch.log(steps))
        table.calibrated.fill_(True)
        table.quant_active = False  # the values are already code * step
    for name, mlp in mlps.items():
        load_mlp_tensors(mlp, tensors, f"{name}.", quant, path)
        set_kernel(mlp, kernel, compile)
    if _renders_with_mean_appearance(model):
        vector = tensors[APPEARANCE]
        if tuple(vector.shape) != (model.field.appearance_embedding_dim,):
            raise Int8ExportError(f"{path}: {APPEARANCE} has shape {tuple(vector.shape)}")
        model.field.embedding_appearance = MeanAppearance(vector.float())


def export_tensors_names(model: nn.Module) -> list:
    """The tensor names ``export_tensors`` gives for ``model`` (computed without its values)."""
    tables, mlps = quantized_parts(model)
    names = [f"{name}.{part}" for name in tables for part in ("codes", "steps")]
    for name, mlp in mlps.items():
        names += list(mlp_tensors(mlp, f"{name}.", model.config.quant))
    if _renders_with_mean_appearance(model):
        names.append(APPEARANCE)
    return names


def table_summary(model: nn.Module) -> Dict[str, Tuple[str, str]]:
    """For the exporter's printed table: each table's codes tensor -> (its shape, what it holds)."""
    tables, _ = quantized_parts(model)
    return {
        f"{name}.codes": (f"{t.groups}x{t.rows_per_group}x{t.features}", f"{t.bits}-bit packed table codes")
        for name, t in tables.items()
    }
