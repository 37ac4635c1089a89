"""Cost of data-parallel QAT bookkeeping, measured with 2 CPU processes (gloo) through nerfstudio's Trainer.

    python scripts/bench_ddp.py --output benchmarks/ddp_cpu

Per step: the one all-reduce that folds every quantizer's batch range (``quant.distributed.sync_observers``), and the
step time with DistributedDataParallel's buffer broadcast (its default: rank 0's buffers sent to every rank before
each forward) and without it. Runs alternate between the two settings; medians over steps and repeats.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import tyro

from nerfqat_plugin.tools.ddp import launch
from nerfqat_plugin.tools.runs import machine, machine_line
from nerfqat_plugin.tools.scenes import write_llff_scene


@dataclass
class BenchDDP:
    """Measure the observer all-reduce and DDP's buffer broadcast per training step."""

    steps: int = 40
    """Training steps per run (the first quarter is left out as warm-up)."""
    repeats: int = 2
    """Runs per setting, alternating."""
    output: Path = Path("benchmarks/ddp_cpu")
    """Write <output>.json and <output>.md."""

    def main(self) -> None:
        step_s: Dict[bool, List[float]] = {True: [], False: []}
        sync_s: List[float] = []
        with tempfile.TemporaryDirectory() as tmp:
            scene = write_llff_scene(Path(tmp) / "scene", num_images=9)
            for repeat in range(self.repeats):
                for broadcast in (True, False):
                    work = Path(tmp) / f"run-{repeat}-{broadcast}"
                    ranks = launch(work, 2, data=scene, steps=self.steps, quant_start_step=0,
                                   broadcast_buffers=broadcast)  # fmt: skip
                    step_s[broadcast].append(ranks[0]["step_s"])  # type: ignore[arg-type]
                    for rank in ranks:
                        sync_s += rank["sync_s"][self.steps // 4 :]  # type: ignore[index]
        result = {
            "command": shlex.join(["python", *sys.argv]),
            "machine": machine("cpu"),
            "settings": {
                "processes": 2,
                "backend": "gloo",
                "steps": self.steps,
                "repeats": self.repeats,
                "model": "tiny preset (2x32), 64 rays per process, QAT from step 0",
            },  # fmt: skip
            "step_s": {"broadcast_buffers": step_s[True], "no_broadcast": step_s[False]},
            "sync_s_median": statistics.median(sync_s),
            "sync_s_max": max(sync_s),
        }
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        on, off = statistics.median(step_s[True]), statistics.median(step_s[False])
        lines = [
            "# Data-parallel bookkeeping, 2 CPU processes",
            "",
            f"Command: `{result['command']}`  ",
            f"Machine: {machine_line(result['machine'])}  ",
            f"Settings: {result['settings']}",
            "",
            "| per training step | ms |",
            "| --- | ---: |",
            f"| observer all-reduce (every quantizer of both MLPs, one collective), median | "
            f"{result['sync_s_median'] * 1e3:.2f} |",
            f"| step with DDP's buffer broadcast (default), median of runs | {on * 1e3:.1f} |",
            f"| step without it, median of runs | {off * 1e3:.1f} |",
            "",
            f"Broadcast on minus off: {(on - off) * 1e3:+.1f} ms per step ({on / off:.3f}x).",
        ]
        self.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    tyro.cli(BenchDDP).main()
