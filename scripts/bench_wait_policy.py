"""How OpenMP's wait policy changes a training step on a CPU that other processes share.

    python scripts/bench_wait_policy.py --output benchmarks/wait_policy_cpu

A bare training step (forward, backward, Adam) of a 4x128 NeRF MLP on 16,384 samples, quantization off and QAT
(compiled, 'auto' kernels), median of 7 interleaved steps, measured in a fresh process per setting: with the
default OpenMP wait policy and with OMP_WAIT_POLICY=PASSIVE (read when PyTorch loads, so only a fresh process can
change it), on a quiet machine, beside one and two busy-looping processes, and beside a second copy of itself.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import tyro

from nerfqat_plugin.tools.runs import machine, machine_line

STEP = """
import json, statistics, sys, time, torch
from nerfqat_plugin.nerf.mlp import NeRFMLP
from nerfqat_plugin.quant import QuantConfig, set_quant_state, set_train_kernels
torch.manual_seed(0)
n = 16384
pos, dirs, target = torch.rand(n, 63) * 2 - 1, torch.rand(n, 27) * 2 - 1, torch.rand(n, 3)
def make(active):
    mlp = NeRFMLP(63, 27, QuantConfig(), num_layers=4, layer_width=128, skip_layer=2, view_width=64).train()
    set_quant_state(mlp, active=active, observe=True)
    set_train_kernels(mlp, True, "auto")
    return mlp, torch.optim.Adam(mlp.parameters(), 1e-3)
def step(mlp, opt):
    raw, h = mlp.density(pos)
    loss = (mlp.color(h, dirs) - target).square().mean() + raw.square().mean()
    opt.zero_grad(); loss.backward(); opt.step()
runs = {"quant off": make(False), "QAT": make(True)}
for r in runs.values():
    for _ in range(3): step(*r)
times = {k: [] for k in runs}
for _ in range(7):
    for k, r in runs.items():
        t = time.perf_counter(); step(*r); times[k].append(time.perf_counter() - t)
print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
"""
BUSY = "while True: pass"
BESIDE = {"nothing": (0, 1), "1 busy process": (1, 1), "2 busy processes": (2, 1), "a second copy of itself": (0, 2)}
"""What runs beside the step: (busy-looping processes, copies of the step running at once)."""


def _step(policy: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    return subprocess.Popen([sys.executable, "-c", STEP], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)  # fmt: skip


def _result(proc: subprocess.Popen) -> Dict[str, float]:
    out, _ = proc.communicate(timeout=900)
    return json.loads(out.strip().splitlines()[-1])


@dataclass
class BenchWaitPolicy:
    """Measure the training step with and without OMP_WAIT_POLICY=PASSIVE under contention."""

    output: Path = Path("benchmarks/wait_policy_cpu")
    """Write <output>.json and <output>.md."""

    def main(self) -> None:
        rows: List[Dict[str, object]] = []
        for beside, (loops, copies) in BESIDE.items():
            for policy in ("default", "PASSIVE"):
                busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(loops)]
                try:
                    time.sleep(0.5)
                    results = [_result(p) for p in [_step(policy) for _ in range(copies)]]
                finally:
                    for b in busy:
                        b.kill()
                seconds = {k: statistics.mean(r[k] for r in results) for k in results[0]}
                rows.append({"beside": beside, "policy": policy, **seconds})
                print(rows[-1], flush=True)
        result = {"command": shlex.join(["python", *sys.argv]), "machine": machine("cpu"), "rows": rows}
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        lines = [
            "# OpenMP wait policy and a shared CPU",
            "",
            f"Command: `{result['command']}`  ",
            f"Machine: {machine_line(result['machine'])}  ",
            "Step: forward, backward and Adam of a 4x128 NeRF MLP on 16,384 samples, median of 7; a fresh process "
            "per row.",
            "",
            "| beside the step | OMP_WAIT_POLICY | quant off ms | QAT ms |",
            "| --- | --- | ---: | ---: |",
        ]
        for r in rows:
            lines.append(f"| {r['beside']} | {r['policy']} | {r['quant off'] * 1e3:.0f} | {r['QAT'] * 1e3:.0f} |")
        self.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    tyro.cli(BenchWaitPolicy).main()
