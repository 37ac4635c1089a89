"""How small lossless coding makes an export's codes: XZ and Zstandard (what the exporter writes) against order-0 ANS.

For each input, the integer codes it holds are coded tensor by tensor, as the export stores them:

- an export (``model.safetensors``): the packed weight codes of every Linear, and a nerfacto-qat export's hash
  tables;
- a nerfacto-qat checkpoint (``step-*.ckpt``): the codes of every hash table (``QuantTable.codes()``, each table
  once), packed at the table's bits.

Reported per input: the packed bytes; their order-0 entropy (per tensor, the bound for one fixed code distribution
a tensor); XZ and Zstandard of the packed bytes (``coding.encode_all``) and the smaller of the two, what
``int8_format.write_file`` stores where it is smaller than the bytes; constriction's ANS coder (``stack.AnsCoder``
with a ``Categorical`` model of the tensor's code frequencies) plus the model it needs stored (3 bytes per code
value used: a 24-bit frequency); and the time each takes to decode everything, in this process.

    pip install -e '.[bench]'
    python scripts/bench_coding.py EXPORT/model.safetensors RUN/nerfstudio_models/step-000000299.ckpt \\
        --output benchmarks/coding_cpu_avx2
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import tyro
from benchlib.report import commit

from nerfqat_plugin import coding
from nerfqat_plugin.tools.runs import machine, machine_line


def export_codes(path: Path) -> List[Tuple[str, np.ndarray, int]]:
    """(name, codes as unsigned values, bits) of every Linear's weight and every hash table (nerfacto-qat) in an
    export."""
    from nerfqat_plugin.int8_format import decode, read_file
    from nerfqat_plugin.quant.pack import unpack_bits

    tensors, metadata = read_file(path)
    weight_bits = int(decode(metadata, "quant")["weight_bits"])
    table_bits = decode(metadata, "architecture").get("table_bits")
    out = []
    for name, t in tensors.items():
        bits = weight_bits if name.endswith(".weight") else table_bits if name.endswith(".codes") else None
        if bits is not None:
            count = t.numel() * 8 // bits  # a partial last byte holds no whole code
            out.append((name, unpack_bits(t, bits, count).numpy(), bits))
    return out


def checkpoint_codes(path: Path) -> List[Tuple[str, np.ndarray, int]]:
    """(name, codes + qmax, bits) of every hash table of a nerfacto-qat checkpoint, each table once."""
    from nerfqat_plugin.quant.table import QuantTable

    state = torch.load(path, map_location="cpu", weights_only=True)["pipeline"]
    out, seen = [], set()
    for key, weight in state.items():
        if not key.endswith("table.weight"):
            continue
        prefix = key[: -len("weight")]
        log_step, bits = state[prefix + "log_step"], int(state[prefix + "code_bits"])
        identity = (weight.data_ptr(), log_step.data_ptr())
        if identity in seen:  # a proposal network's encoding is registered under two names
            continue
        seen.add(identity)
        groups = log_step.numel()
        table = QuantTable(groups, weight.shape[0] // groups, weight.shape[1], bits, weight)
        table.log_step.data.copy_(log_step)
        codes, _ = table.codes()
        out.append((key.replace("_model.", ""), (codes.reshape(-1).long() + table.qmax).numpy(), bits))
    if not out:
        raise SystemExit(f"{path}: no quantized hash tables in this checkpoint (a nerfacto-qat run's step-*.ckpt?)")
    return out


def measure(items: List[Tuple[str, np.ndarray, int]]) -> Dict[str, float]:
    import constriction

    from nerfqat_plugin.quant.pack import pack_bits

    total = {"tensors": len(items), "codes": 0, "packed": 0, "entropy": 0.0, "ans": 0, "ans_model": 0}
    total.update({codec: 0 for codec in coding.CODECS}, stored=0)
    frames, streams = [], []
    for _, symbols, bits in items:
        packed = pack_bits(torch.from_numpy(symbols), bits).numpy().tobytes()
        counts = np.bincount(symbols)
        p = counts[counts > 0] / symbols.size
        coded = coding.encode_all(packed)
        used = np.flatnonzero(counts)
        model = constriction.stream.model.Categorical((counts / counts.sum()).astype(np.float64), perfect=False)
        encoder = constriction.stream.stack.AnsCoder()
        encoder.encode_reverse(symbols.astype(np.int32), model)
        compressed = encoder.get_compressed()
        total["codes"] += symbols.size
        total["packed"] += len(packed)
        total["entropy"] += float(-(p * np.log2(p)).sum()) * symbols.size / 8
        for codec, stream in coded.items():  # each codec alone, raw where it does not pay (as the exporter)
            total[codec] += min(len(stream), len(packed))
        codec, stream = coding.encode(packed)
        total["stored"] += min(len(stream), len(packed))
        total["ans"] += compressed.nbytes
        total["ans_model"] += 3 * used.size
        frames += [(c, coded[c], len(packed)) for c in coding.CODECS]
        streams.append((compressed, model, symbols))
    for codec in coding.CODECS:
        start = time.perf_counter()
        for c, stream, nbytes in frames:
            if c == codec:
                coding.decode(c, stream, nbytes)
        total[f"{codec}_decode_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for compressed, model, symbols in streams:
        decoded = constriction.stream.stack.AnsCoder(compressed).decode(model, symbols.size)
        assert np.array_equal(decoded, symbols), "ANS round trip failed"
    total["ans_decode_s"] = time.perf_counter() - start
    return total


@dataclass
class BenchCoding:
    """XZ and Zstandard against order-0 ANS on the codes of exports and checkpoints."""

    inputs: tyro.conf.Positional[Tuple[Path, ...]]
    """nerf-qat export files (model.safetensors) and nerfacto-qat checkpoints (step-*.ckpt)."""
    output: Optional[Path] = None
    """Write <output>.json and <output>.md."""
    label: Tuple[str, ...] = ()
    """A description per input for the report (default: its path)."""

    def main(self) -> None:
        rows = []
        for i, path in enumerate(self.inputs):
            items = checkpoint_codes(path) if path.suffix == ".ckpt" else export_codes(path)
            label = self.label[i] if i < len(self.label) else str(path)
            rows.append({"input": label, **measure(items)})
            print(json.dumps(rows[-1]), flush=True)
        result = {
            "command": "python scripts/bench_coding.py " + " ".join(sys.argv[1:]),
            "commit": commit(),
            "machine": machine("cpu"),
            "rows": rows,
        }
        print(report(result))
        if self.output:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
            self.output.with_suffix(".md").write_text(report(result))


def report(result: Dict) -> str:
    lines = [
        "# Lossless coding of integer codes: XZ and Zstandard against order-0 ANS",
        "",
        f"Commit: {result['commit']}  ",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine_line(result['machine'])}",
        "",
        "Per tensor: packed codes; their order-0 entropy; XZ (LZMA2 preset 9, no literal context) and Zstandard "
        "(level 19) of the packed bytes, each stored raw where it is not smaller, as the exporter does, and what the "
        "exporter stores (the smaller of the two); constriction's ANS coder with a categorical model of the tensor's "
        "code frequencies, plus 3 bytes per used code value to store that model. Bytes summed over tensors; decode "
        "times of everything, one pass.",
        "",
        "| input | tensors | codes | packed | order-0 entropy | xz | zstd | stored (smaller) | ANS + model | "
        "xz decode s | zstd decode s | ANS decode s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['input']} | {r['tensors']} | {r['codes']:,} | {r['packed']:,} | {r['entropy']:,.0f} | "
            f"{r['xz']:,} | {r['zstd']:,} | {r['stored']:,} | {r['ans'] + r['ans_model']:,} | "
            f"{r['xz_decode_s']:.3f} | {r['zstd_decode_s']:.3f} | {r['ans_decode_s']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    tyro.cli(BenchCoding).main()
