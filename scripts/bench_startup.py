"""Start-up time of a nerfstudio command with and without nerf-qat's fix of nerfstudio's external-method check.

Each trial runs ``ns-eval --help`` in a fresh Python the way its console script does (import
``nerfstudio.scripts.eval``, whose imports build nerfstudio's method list and load the plugins, then call its
``entrypoint``); "nerfstudio's check" disables ``nerfqat_plugin.startup``'s patch in that process first, "patched"
leaves it on. The two alternate, so
load on the machine falls on both alike; the report gives each trial and the median ratio.

    python scripts/bench_startup.py --trials 5 --output benchmarks/startup_cpu_avx2
"""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import tyro

from nerfqat_plugin.tools.runs import machine, machine_line

IMPORT = "import sys; sys.argv = ['ns-eval', '--help']; from nerfstudio.scripts.eval import entrypoint; entrypoint()"
VARIANTS: Dict[str, str] = {
    "nerfstudio's check": "import nerfqat_plugin.startup as s; s.patch_external_method_check = lambda: None; " + IMPORT,
    "patched": IMPORT,
}


def trial(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


@dataclass
class Main:
    trials: int = 5
    """Trials of each variant (alternating)."""
    output: Optional[Path] = None
    """Write OUTPUT.json and OUTPUT.md; without it the report is printed only."""

    def main(self) -> None:
        times: Dict[str, List[float]] = {name: [] for name in VARIANTS}
        trial(IMPORT)  # warm the file cache
        for _ in range(self.trials):
            for name, code in VARIANTS.items():
                times[name].append(trial(code))
        medians = {name: statistics.median(t) for name, t in times.items()}
        result = {
            "command": shlex.join(["python", *sys.argv]),
            "machine": machine(),
            "seconds": times,
            "median_s": medians,
            "median_saved_s": medians["nerfstudio's check"] - medians["patched"],
        }
        lines = [
            "# Start-up of a nerfstudio command: nerfstudio's external-method check vs nerf-qat's patch",
            "",
            f"Command: `{result['command']}`  ",
            f"Machine: {machine_line(result['machine'])}",
            "",
            "Seconds of `ns-eval --help` in a fresh Python (its console script's import and entry point: the start-up "
            "every `ns-*` command pays before it does anything), trials alternating:",
            "",
            "| variant | median s | trials s |",
            "| --- | ---: | --- |",
        ]
        for name, t in times.items():
            lines.append(f"| {name} | {medians[name]:.2f} | {', '.join(f'{x:.2f}' for x in t)} |")
        lines += ["", f"Saved per command start: {result['median_saved_s']:.2f} s (medians)."]
        text = "\n".join(lines) + "\n"
        print(text)
        if self.output:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
            self.output.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    tyro.cli(Main).main()
