"""nerfacto-qat's hash encoding against nerfstudio's (PyTorch implementation) on nerfacto's field grid, this machine.

Both hold the same table (``--levels`` levels of 2^``--log2-hashmap-size`` rows, 2 features, resolutions 16 to
``--max-res``) and encode the same random points in [0, 1)^3: a render's lookups (no gradients; nerfacto-qat's
export reads its table the same way, unquantized values ``code * step``) and a training step's (forward and
backward to the table, quantization off). The two alternate, best of ``--repeats`` each round, median over rounds;
the outputs are checked equal first.

    python scripts/bench_hash_encoding.py --output benchmarks/hash_encoding_cpu_vnni
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import tyro
from benchlib.report import provenance
from nerfstudio.field_components.encodings import HashEncoding

from nerfqat_plugin.nerfacto.encoding import QuantHashEncoding
from nerfqat_plugin.tools.runs import machine


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@dataclass
class Main:
    points: Tuple[int, ...] = (4096 * 48, 16384)
    """Points per call: a render chunk of 4,096 rays x 48 field samples, and a smaller batch."""
    levels: int = 16
    """Levels of the grid (nerfacto's field: 16)."""
    log2_hashmap_size: int = 17
    """log2 of the rows per level (nerfacto's default 19; the CPU benchmarks use 17)."""
    max_res: int = 2048
    """Finest level's resolution (nerfacto's field: 2048)."""
    rounds: int = 5
    """Alternating rounds (the median is reported)."""
    repeats: int = 3
    """Calls per round and encoding (the fastest counts)."""
    output: Optional[Path] = None
    """Write OUTPUT.json and OUTPUT.md; without it the report is printed only."""

    def main(self) -> None:
        torch.manual_seed(0)
        grid = dict(num_levels=self.levels, min_res=16, max_res=self.max_res, log2_hashmap_size=self.log2_hashmap_size)
        ours = QuantHashEncoding(**grid)
        theirs = HashEncoding(**grid, implementation="torch")
        theirs.hash_table.data.copy_(ours.table.weight.data)
        rows: List[Dict[str, object]] = []
        for n in self.points:
            x = torch.rand(n, 3, generator=torch.Generator().manual_seed(n))
            with torch.no_grad():
                if not torch.equal(ours(x), theirs(x)):
                    raise SystemExit("the two encodings differ: nothing measured")
            for mode in ("render", "train"):
                calls = {name: _call(enc, x, mode) for name, enc in (("nerfstudio", theirs), ("nerfacto-qat", ours))}
                times: Dict[str, List[float]] = {name: [] for name in calls}
                for fn in calls.values():
                    fn()  # warm up
                for _ in range(self.rounds):
                    for name, fn in calls.items():
                        times[name].append(_best(fn, self.repeats))
                med = {name: statistics.median(t) for name, t in times.items()}
                rows.append({"points": n, "mode": mode, "seconds": times, "median_s": med,
                             "speedup": med["nerfstudio"] / med["nerfacto-qat"]})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
        result = {"command": shlex.join(["python", *sys.argv]), "machine": machine(), "grid": grid, "rows": rows}
        text = report(result)
        print(text)
        if self.output is not None:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
            self.output.with_suffix(".md").write_text(text)


def _call(encoding, x: torch.Tensor, mode: str) -> Callable[[], object]:
    if mode == "render":
        return lambda: _no_grad(encoding, x)

    def step() -> None:
        encoding.zero_grad(set_to_none=True)
        encoding(x).sum().backward()

    return step


@torch.no_grad()
def _no_grad(encoding, x: torch.Tensor) -> torch.Tensor:
    return encoding(x)


def report(result: Dict) -> str:
    g = result["grid"]
    lines = [
        "# Hash encoding: nerfacto-qat's against nerfstudio's (PyTorch), same table, same points",
        "",
        *provenance(result),
        f"Grid: {g['num_levels']} levels of 2^{g['log2_hashmap_size']} rows x 2 features, resolutions "
        f"{g['min_res']} to {g['max_res']} (nerfacto's field grid). Render: no gradients (nerfacto-qat's export reads "
        "its table so); train: forward and backward to the table, quantization off. Alternating, best of the "
        "repeats each round, median over rounds; outputs checked equal first.",
        "",
        "| points | mode | nerfstudio ms | nerfacto-qat ms | speed-up |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        m = r["median_s"]
        lines.append(
            f"| {r['points']:,} | {r['mode']} | {m['nerfstudio'] * 1e3:.1f} | {m['nerfacto-qat'] * 1e3:.1f} | "
            f"{r['speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    tyro.cli(Main).main()
