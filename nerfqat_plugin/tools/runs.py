"""How the scripts and tests run nerf-qat: presets, the ns-train flags, a runner for nerfstudio's commands,
in-process trainers, and the description of the machine a measurement ran on."""

from __future__ import annotations

import copy
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch

BIN = Path(sys.executable).parent
"""Where this environment's console scripts (ns-train, ns-export-int8, ...) are."""
NO_EVAL = 10**9
"""A step interval no run reaches: nerfstudio's periodic evaluations stay off."""


@dataclass(frozen=True)
class Preset:
    """The network, the samples per ray and the rays per batch of a run."""

    num_layers: int
    layer_width: int
    skip_layer: int
    view_width: int
    coarse_samples: int
    fine_samples: int
    rays: int
    """Rays per training (and evaluation) batch."""
    quant_start_step: Optional[int] = None
    """Step at which fake quantization starts (None: nerf-qat's default)."""
    sampler: Optional[str] = None
    """nerf-qat's sampler, 'hierarchical' or 'occupancy' (None: nerf-qat's default). The samples above are the
    hierarchical sampler's; the occupancy sampler always gets their sum as its bins."""

    @property
    def mlp_samples_per_ray(self) -> int:
        """MLP evaluations per ray: coarse, then coarse + fine again for the fine network."""
        return self.coarse_samples + (self.coarse_samples + self.fine_samples)

    def sampling_flags(self) -> List[str]:
        """ns-train flags every NeRF method takes (nerf-qat and nerfstudio's vanilla-nerf)."""
        return [
            "--pipeline.datamanager.train-num-rays-per-batch", str(self.rays),
            "--pipeline.datamanager.eval-num-rays-per-batch", str(self.rays),
            "--pipeline.model.num-coarse-samples", str(self.coarse_samples),
            "--pipeline.model.num-importance-samples", str(self.fine_samples),
        ]  # fmt: skip

    def model_flags(self) -> List[str]:
        """ns-train flags of nerf-qat's network and schedule, with the sampling flags."""
        flags = [
            "--pipeline.model.num-layers", str(self.num_layers),
            "--pipeline.model.layer-width", str(self.layer_width),
            "--pipeline.model.skip-layer", str(self.skip_layer),
            "--pipeline.model.view-width", str(self.view_width),
            *self.sampling_flags(),
        ]  # fmt: skip
        if self.quant_start_step is not None:
            flags += ["--pipeline.model.quant.quant-start-step", str(self.quant_start_step)]
        if self.sampler is not None:
            flags += ["--pipeline.model.sampler", self.sampler]
        return flags + ["--pipeline.model.occupancy.samples", str(self.coarse_samples + self.fine_samples)]

    def apply(self, config) -> None:
        """Set this preset on an in-process nerf-qat ``TrainerConfig``."""
        model = config.pipeline.model
        for name in ("num_layers", "layer_width", "skip_layer", "view_width"):
            setattr(model, name, getattr(self, name))
        model.num_coarse_samples, model.num_importance_samples = self.coarse_samples, self.fine_samples
        config.pipeline.datamanager.train_num_rays_per_batch = self.rays
        config.pipeline.datamanager.eval_num_rays_per_batch = self.rays
        if self.quant_start_step is not None:
            model.quant.quant_start_step = self.quant_start_step
        if self.sampler is not None:
            model.sampler = self.sampler
        model.occupancy.samples = self.coarse_samples + self.fine_samples


PRESETS: Dict[str, Preset] = {
    "tiny": Preset(2, 32, 1, 16, 8, 8, rays=64, quant_start_step=10),
    "cpu": Preset(4, 128, 2, 64, 32, 32, rays=256),
    "gpu": Preset(8, 256, 4, 128, 64, 128, rays=1024),
}
"""tiny: the tests (seconds per run on a CPU; runs of tens of steps, so QAT from step 10); cpu: 2-core benchmarks
and the demo; gpu: the original NeRF (8x256 MLP, 64+128 samples, 1024 rays)."""


def train_flags(
    device: str,
    output_dir: Path,
    experiment: str,
    steps: int,
    preset: Optional[Preset] = None,
    method: str = "nerf-qat",
    timestamp: Optional[str] = None,
    seed: Optional[int] = None,
    save_every: Optional[int] = None,
) -> List[str]:
    """The ns-train arguments (method first, dataparser arguments to follow) of a run without periodic evaluation."""
    flags = [
        method,
        "--machine.device-type", device,
        "--vis", "tensorboard",
        "--output-dir", str(output_dir),
        "--experiment-name", experiment,
        "--max-num-iterations", str(steps),
        "--steps-per-save", str(save_every or steps),
        "--steps-per-eval-batch", str(NO_EVAL),
        "--steps-per-eval-image", str(NO_EVAL),
        "--steps-per-eval-all-images", str(NO_EVAL),
    ]  # fmt: skip
    if timestamp is not None:
        flags += ["--timestamp", timestamp]
    if seed is not None:
        flags += ["--machine.seed", str(seed)]
    if preset is not None:
        flags += preset.model_flags() if method == "nerf-qat" else preset.sampling_flags()
    return flags


def find_config(output_dir: Path, experiment: str = "*", method: str = "*") -> Path:
    """The newest ``config.yml`` of a run under ``output_dir``."""
    configs = sorted(Path(output_dir).glob(f"{experiment}/{method}/*/config.yml"), key=lambda p: p.stat().st_mtime)
    if not configs:
        raise FileNotFoundError(f"no {experiment}/{method}/*/config.yml under {output_dir}")
    return configs[-1]


# --- commands ------------------------------------------------------------------------------------------------------


class CommandFailed(RuntimeError):
    """A command exited non-zero; the message names it and ends with the last lines of its output."""


def command_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment commands run in: offline, quiet, and OpenMP threads that sleep when idle (a user's own
    ``OMP_WAIT_POLICY`` is kept)."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    env.update(extra or {})
    return env


def tool(name: str) -> str:
    """A console script of this environment (beside the interpreter, else on PATH)."""
    return str(BIN / name) if (BIN / name).exists() else (shutil.which(name) or name)


def run(
    cmd: Sequence[str],
    log: Optional[Path] = None,
    cwd: Optional[Path] = None,
    env: Optional[Mapping[str, str]] = None,
    timeout: Optional[float] = None,
    tail: int = 30,
) -> str:
    """Run ``cmd`` (stdout and stderr together, also written to ``log`` if given) and return its output;
    ``CommandFailed`` with the last ``tail`` lines if it exits non-zero."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=command_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", timeout=timeout,
    )  # fmt: skip
    if log is not None:
        Path(log).write_text(proc.stdout)
    if proc.returncode != 0:
        name = f"{Path(str(cmd[0])).name} {' '.join(map(str, cmd[1:3]))}"
        where = f", see {log}" if log is not None else ""
        last = "".join(proc.stdout.splitlines(True)[-tail:])
        raise CommandFailed(f"{name} exited {proc.returncode}{where}:\n{last}")
    return proc.stdout


def ns(name: str, *args: object, **kwargs) -> str:
    """Run one of this environment's console scripts (``ns-train``, ``ns-export-int8``, ...): see ``run``."""
    return run([tool(name), *map(str, args)], **kwargs)


def offline(name: str, *args: object, **kwargs) -> str:
    """Run nerfstudio's ``ns-train`` or ``ns-eval`` through ``nerfqat_plugin.offline`` (for its own methods, whose
    LPIPS would download weights): see ``run``."""
    return run([sys.executable, "-m", "nerfqat_plugin.offline", name, *map(str, args)], **kwargs)


# --- in-process training -------------------------------------------------------------------------------------------


def trainer_config(base, device: str, output_dir: Path, steps: int, preset: Optional[Preset] = None):
    """A copy of a method's ``TrainerConfig`` set up for an in-process run of ``steps`` steps without evaluations."""
    config = copy.deepcopy(base)
    config.machine.device_type = device
    config.vis = "tensorboard"
    config.output_dir = Path(output_dir)
    config.experiment_name = "run"
    config.timestamp = "run"
    config.max_num_iterations = steps
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = NO_EVAL
    if preset is not None:
        if config.method_name == "nerf-qat":
            preset.apply(config)
        else:
            config.pipeline.datamanager.train_num_rays_per_batch = preset.rays
            config.pipeline.model.num_coarse_samples = preset.coarse_samples
            config.pipeline.model.num_importance_samples = preset.fine_samples
    return config


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random streams, as ns-train does before it builds a trainer (nerfstudio's
    image cache orders the images with Python's ``random``: seeding torch alone leaves the data order to chance)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_step(trainer, step: int) -> Dict[str, object]:
    """One step of ns-train's loop (``Trainer.train``): the pipeline in training mode, the callbacks that run before
    an iteration, ``Trainer.train_iteration``, the callbacks that run after it (nerfacto's proposal schedule)."""
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    trainer.pipeline.train()
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    _, _, metrics = trainer.train_iteration(step)
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    return metrics


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# --- the machine ---------------------------------------------------------------------------------------------------


def machine(device: str = "cpu") -> Dict[str, object]:
    """What a measurement ran on: CPU model and ISA, threads, OpenMP wait policy, torch, GPU, and every kernel
    decision this process made (``quant.dispatch``)."""
    from nerfqat_plugin.quant import dispatch

    info: Dict[str, object] = {
        "device": device,
        "cpu_model": _cpu_model(),
        "cpu_isa": dispatch.isa_summary(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    info["kernel_decisions"] = dispatch.decisions()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(info: Mapping[str, object]) -> str:
    """One Markdown line naming the machine of a report (kernel decisions left out: they follow in a list)."""
    keys = [k for k in info if k != "kernel_decisions"]
    return ", ".join(f"{k} {info[k]}" for k in keys)


def decision_lines(info: Mapping[str, object]) -> List[str]:
    """The Markdown list of a report's kernel decisions (``machine()["kernel_decisions"]``), empty without any."""
    decisions = info.get("kernel_decisions") or []
    if not decisions:
        return []
    return ["", "Kernel decisions in this process:", ""] + [f"- {d}" for d in decisions]  # type: ignore[union-attr]
