"""Training, exporting and evaluating the fern benchmark's runs with nerfstudio's command-line tools."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from benchlib.reading import (
    config_at_step,
    logged_rays_per_sec,
    logged_window,
    mlp_fp32_bytes,
    saved_steps,
    scene_bounds,
)
from benchlib.variants import Variant
from nerfqat_plugin.tools.runs import CommandFailed, Preset, command_env, offline, run, tool, train_flags


@dataclass(frozen=True)
class Training:
    """What every run of one benchmark is trained with."""

    data: Path
    """The LLFF scene (poses_bounds.npy and images_<factor>)."""
    downscale_factor: int
    model: Preset
    steps: int
    """Most training steps."""
    save_every: int
    """Checkpoint interval; every checkpoint is kept."""
    device: str
    seed: int


class Run:
    """One variant: its training process, checkpoints, and the evaluations at the compared step."""

    def __init__(self, variant: Variant, folder: Path, training: Training):
        self.variant, self.folder, self.training = variant, folder, training
        self.name, method = variant.name, variant.method
        self.run_dir = folder / "outputs" / self.name / method.name / "run"
        self.error: Optional[str] = None
        self.train_wall_s: Optional[float] = None
        self.train_window: Optional[Tuple[float, float]] = None
        """Unix times the training process started and ended."""
        self.results: Dict[str, object] = {}
        t = training
        flags = train_flags(
            t.device, folder / "outputs", self.name, t.steps, t.model, method.name, "run", t.seed, t.save_every
        )
        flags += ["--save-only-latest-checkpoint", "False"]
        launcher = (
            [sys.executable, "-m", "nerfqat_plugin.offline", "ns-train"] if method.offline else [tool("ns-train")]
        )
        bounds: List[str] = []
        if not method.ndc:  # sample the scene's near..far range in world space
            near, far = scene_bounds(t.data, t.downscale_factor)
            bounds = ["--pipeline.model.collider-params", "near_plane", str(near), "far_plane", str(far)]
        schedule = [method.schedule_flag, str(t.steps)] if method.schedule_flag else []
        data = ["llff-data", "--data", str(t.data), "--downscale-factor", str(t.downscale_factor)]
        self.cmd = [*launcher, *flags, *bounds, *schedule, *variant.flags, *data, "--ndc", str(method.ndc)]

    def start(self) -> subprocess.Popen:
        """Start ns-train in an emptied folder, its output going to train.log."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        self._log = open(self.folder / "train.log", "w")
        self._started = time.time()
        # a session of its own, so that stopping it also stops its dataloader workers
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=command_env(), start_new_session=True
        )
        return self.proc

    def finished(self, stopped: bool) -> None:
        """Record how the training process ended (``stopped``: by the wall-time limit)."""
        self.train_wall_s = time.time() - self._started
        self.train_window = (self._started, time.time())
        (self.folder / "train_window.json").write_text(json.dumps(self.train_window))
        self._log.close()
        if self.proc.returncode != 0 and not stopped:
            tail = "".join((self.folder / "train.log").read_text(errors="replace").splitlines(True)[-15:])
            self.error = f"ns-train exited {self.proc.returncode}, see {self.folder / 'train.log'}:\n{tail}"
        elif not self.saved_steps():
            self.error = f"no checkpoint saved before the run stopped, see {self.folder / 'train.log'}"

    def finished_before(self, steps: int) -> bool:
        """Whether an earlier invocation left this run with its last step saved."""
        saved = self.saved_steps()
        return bool(saved) and saved[-1] >= steps - 1

    def reuse(self) -> None:
        """Take the run as an earlier invocation left it: its checkpoints, and its training window (recorded, or
        else the first and last of nerfstudio's logged events)."""
        window = self.folder / "train_window.json"
        if window.is_file():
            self.train_window = tuple(json.loads(window.read_text()))  # type: ignore[assignment]
        elif self.saved_steps():
            self.train_window = logged_window(self.run_dir)
        if self.train_window is not None:
            self.train_wall_s = self.train_window[1] - self.train_window[0]
        if not self.saved_steps():
            self.error = f"no checkpoint in {self.run_dir} to evaluate (train it first)"

    def saved_steps(self) -> List[int]:
        """Steps of the run's complete checkpoints."""
        return saved_steps(self.run_dir)

    def evaluate(self, step: int) -> None:
        """ns-eval of the run at ``step``; for quantized runs also ns-export-int8 at that step and ns-eval of the
        export."""
        try:
            config = config_at_step(self.run_dir / "config.yml", step)
            self.results["trained"] = self._eval(config, "trained")
            if self.variant.quantized:
                export = self.folder / "int8"
                run([tool("ns-export-int8"), "--load-config", config, "--output-dir", export, "--overwrite"],
                    self.folder / "export.log")  # fmt: skip
                self.results["export_file_bytes"] = (export / "model.safetensors").stat().st_size
                self.results["export"] = str(export / "config.yml")
                self.results["int8"] = self._eval(export / "config.yml", "int8")
        except CommandFailed as err:
            self.error = str(err)

    def _eval(self, config: Path, name: str) -> Dict[str, Optional[float]]:
        output = self.folder / f"eval_{name}.json"
        command = ["ns-eval", "--load-config", config, "--output-path", output]
        if self.variant.method.offline:
            offline(*command, log=self.folder / f"eval_{name}.log")
        else:
            run([tool(command[0]), *command[1:]], self.folder / f"eval_{name}.log")
        results = json.loads(output.read_text())["results"]
        lpips = results.get("lpips", results.get("fine_lpips"))
        return {
            "psnr": results["psnr"],
            "ssim": results.get("ssim", results.get("fine_ssim")),
            "lpips": None if lpips is None or math.isnan(lpips) else lpips,
            "eval_rays_per_s": results.get("num_rays_per_sec"),
        }

    def row(self) -> Dict[str, object]:
        """The run's row of the result: how it trained, and its evaluations."""
        row: Dict[str, object] = {"variant": self.name, "flags": list(self.variant.flags)}
        if self.error is not None:
            row["error"] = self.error
        steps = self.saved_steps()
        rays_per_s = logged_rays_per_sec(self.run_dir) if steps else None
        samples_per_ray = self.training.model.mlp_samples_per_ray
        row.update(
            steps_saved=steps,
            train_wall_s=self.train_wall_s,
            train_window_unix_s=self.train_window,
            train_rays_per_s=rays_per_s,
            train_samples_per_s=rays_per_s * samples_per_ray if rays_per_s else None,
            run=str(self.run_dir / "config.yml"),
        )
        if steps:
            row["fp32_weight_bytes"] = mlp_fp32_bytes(self.run_dir)
        row.update(self.results)
        if "int8" in row and "trained" in row:
            row["int8_minus_trained_psnr_db"] = row["int8"]["psnr"] - row["trained"]["psnr"]  # type: ignore[index]
        return row


def train_all(runs: Sequence[Run], parallel: bool, seconds: Optional[float]) -> None:
    """Train the runs, all at once or one after another; stop those still going after ``seconds`` in all."""
    deadline = None if seconds is None else time.time() + seconds
    pending = list(runs)
    active: List[Run] = []
    while pending or active:
        while pending and (parallel or not active):
            r = pending.pop(0)
            print(f"[train] {r.name}", flush=True)
            r.start()
            active.append(r)
        time.sleep(1.0)
        for r in list(active):
            stop = deadline is not None and time.time() > deadline
            if r.proc.poll() is None and stop:
                stop_process(r.proc)
            if r.proc.poll() is not None:
                r.finished(stopped=stop)
                active.remove(r)
                print(f"[train] {r.name}: steps saved {r.saved_steps()[-3:]}{' (stopped)' if stop else ''}", flush=True)


def stop_process(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGINT the process group (a training run keeps its saved checkpoints), then SIGKILL after ``grace``."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
