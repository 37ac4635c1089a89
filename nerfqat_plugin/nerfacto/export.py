"""The integer export of a nerfacto-qat run, and loading it back into a ``NerfactoQATModel`` that renders from it.

Tensors (in ``int8_format``'s file; every name is the module's path in the model):

- each hash table ``<table>`` (the field's grid, the proposal networks'): ``<table>.codes`` uint8, the codes
  ``+ qmax`` packed ``table_bits`` bits each, row-major ``[rows, features]`` over the table's reachable rows in
  increasing order (``QuantHashEncoding.reachable_rows``: the rows a point in [0, 1]^3 can gather; a coarse level
  reaches few of its rows), or over all ``levels * rows_per_level`` rows in files without ``table_rows`` metadata
  (written before); ``<table>.steps`` float32 ``[levels]``: an entry is ``code * steps[level]``;
- each MLP ``<mlp>`` (the field's geometry MLP and colour head, each proposal network's): nerf-qat's integer Linear
  tensors (``int8_format.mlp_tensors``: packed weight codes, bf16 scales, fp32 biases, activation ranges);
- ``field.appearance_mean`` float32 ``[appearance_embed_dim]``: the one appearance vector rendering uses
  (nerfstudio's field renders with the mean of the per-image embeddings), when the model has an appearance
  embedding and renders with its mean.

Loaded, each table holds ``code * step`` in fp32, the product training's fake quantization formed (0 in the rows
no point reaches), and reads it without quantizing again; the MLPs are integer (``quant.int8``), reproducing
training's activation codes; so the export renders what the fake-quantized run rendered, value for value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from nerfqat_plugin.int8_format import Int8ExportError, check_quant, decode, load_mlp_tensors, mlp_tensors, read_file
from nerfqat_plugin.nerfacto.encoding import REACHABLE_CORNER_LIMIT, QuantHashEncoding
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
TABLE_ROWS = "table_rows"
"""Metadata: which rows of each table the file holds (``{"rows": "reachable", "corner_limit": N}``; absent: all)."""


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


def table_rows_metadata() -> Dict[str, object]:
    """What this version writes under ``TABLE_ROWS``."""
    return {"rows": "reachable", "corner_limit": REACHABLE_CORNER_LIMIT}


def stored_rows(model: nn.Module, rows_metadata: Optional[Dict[str, object]]) -> Dict[str, Optional[Tensor]]:
    """Per table (by path): the rows a file with ``rows_metadata`` holds, increasing (None: all of them)."""
    encodings = {f"{name}.table": m for name, m in model.named_modules() if isinstance(m, QuantHashEncoding)}
    rows: Dict[str, Optional[Tensor]] = {}
    for name in quantized_parts(model)[0]:
        if rows_metadata is None or name not in encodings:
            rows[name] = None
        else:
            rows[name] = encodings[name].reachable_rows(int(rows_metadata["corner_limit"]))
    return rows


def _renders_with_mean_appearance(model: nn.Module) -> bool:
    return model.field.embedding_appearance is not None and model.config.use_average_appearance_embedding


@torch.no_grad()
def export_tensors(model: nn.Module) -> Dict[str, Tensor]:
    """The file's tensors for a trained (fake-quantized) nerfacto-qat model."""
    tables, mlps = quantized_parts(model)
    rows = stored_rows(model, table_rows_metadata())
    out: Dict[str, Tensor] = {}
    for name, table in tables.items():
        codes, steps = table.codes()
        kept = codes if rows[name] is None else codes[rows[name].to(codes.device)]
        out[f"{name}.codes"] = pack_bits(kept.to(torch.int64) + table.qmax, table.bits)
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
    rows_metadata = decode(metadata, TABLE_ROWS) if TABLE_ROWS in metadata else None
    if rows_metadata is not None and (
        not isinstance(rows_metadata, dict)
        or rows_metadata.get("rows") != "reachable"
        or not isinstance(rows_metadata.get("corner_limit"), int)
    ):
        raise Int8ExportError(f"{path}: {TABLE_ROWS} metadata {rows_metadata!r} is not one this version reads")
    tables, mlps = quantized_parts(model)
    rows = stored_rows(model, rows_metadata)
    expected = set(export_tensors_names(model))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise Int8ExportError(
            f"{path}: tensors differ from the config's model (missing {missing[:3]}, extra {extra[:3]})"
        )
    for name, table in tables.items():  # check every table before changing any
        total = table.groups * table.rows_per_group
        held = total if rows[name] is None else len(rows[name])
        for key, shape in ((f"{name}.codes", (packed_nbytes(held * table.features, table.bits),)),
                           (f"{name}.steps", (table.groups,))):  # fmt: skip
            if tuple(tensors[key].shape) != shape:
                raise Int8ExportError(
                    f"{path}: {key} has shape {tuple(tensors[key].shape)}, the config's table needs {shape} "
                    f"({held} of its {table.groups} levels x {table.rows_per_group} rows, x {table.features} "
                    f"features, {table.bits} bits)"
                )
        steps = tensors[f"{name}.steps"]
        if not bool(torch.isfinite(steps).all() & (steps > 0).all()):
            raise Int8ExportError(f"{path}: {name}.steps holds steps that are not positive and finite")
    for name, table in tables.items():
        total = table.groups * table.rows_per_group
        held = torch.arange(total) if rows[name] is None else rows[name]
        codes = unpack_bits(tensors[f"{name}.codes"], table.bits, len(held) * table.features) - table.qmax
        steps = tensors[f"{name}.steps"].to(table.weight.device)
        per_row = steps.repeat_interleave(table.rows_per_group)[:, None]
        full = torch.zeros(total, table.features, dtype=torch.int64)
        full[held] = codes.reshape(len(held), table.features).to(torch.int64)
        table.weight.copy_(full.float().to(per_row.device) * per_row)
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
    rows = stored_rows(model, table_rows_metadata())
    summary = {}
    for name, t in tables.items():
        total = t.groups * t.rows_per_group
        held = total if rows[name] is None else len(rows[name])
        summary[f"{name}.codes"] = (
            f"{held}x{t.features} ({t.groups}x{t.rows_per_group} rows, {held / total:.0%} reachable)",
            f"{t.bits}-bit packed table codes",
        )
    return summary
