"""Data-parallel nerf-qat on CPU processes (gloo), through nerfstudio's own Trainer and pipeline.

nerfstudio's launcher (``ns-train --machine.num-devices N``) needs CUDA, and its pipeline wraps the model with
``DistributedDataParallel(model, device_ids=[local_rank])``, which a CPU module refuses. For tests and measurements
this module starts the processes itself and changes exactly that one call (no ``device_ids`` on CPU); the rest is
nerfstudio's code path: ``TrainerConfig.setup(local_rank, world_size)``, ``Trainer.setup``, ``Trainer.train``.

    python -m nerfqat_plugin.tools.ddp --help      # one worker; ``launch`` starts N of them
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
import tyro

from nerfqat_plugin.tools.runs import PRESETS, command_env, trainer_config


@dataclass
class Worker:
    """One rank of a data-parallel run on CPU (gloo)."""

    rank: int
    world_size: int
    port: int
    """TCP port of the rendezvous on 127.0.0.1."""
    workdir: Path
    """Where the run and each rank's result file go."""
    data: Optional[Path] = None
    """An LLFF scene to train on (mode 'train')."""
    mode: str = "train"
    """'train': the nerfstudio Trainer; 'observers': known batches through a NeRF MLP's observers (no training)."""
    steps: int = 8
    """Training steps (or batches of known data)."""
    quant_start_step: int = 3
    """Step at which fake quantization starts."""
    broadcast_buffers: bool = True
    """DistributedDataParallel's buffer broadcast before every forward (its default, and nerfstudio's)."""
    seed: int = 42

    def main(self) -> None:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(self.port))
        torch.distributed.init_process_group("gloo", rank=self.rank, world_size=self.world_size)
        try:
            result = self.train() if self.mode == "train" else self.observers()
        finally:
            torch.distributed.destroy_process_group()
        (self.workdir / f"rank{self.rank}.json").write_text(json.dumps(result))

    def train(self) -> Dict[str, object]:
        import nerfstudio.pipelines.base_pipeline as base_pipeline
        from nerfstudio.utils import comms

        import nerfqat_plugin.qat_callbacks as callbacks_module
        from nerfqat_plugin.llff import LLFFDataParserConfig
        from nerfqat_plugin.registration import nerf_qat

        broadcast = self.broadcast_buffers

        class CPUDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
            """nerfstudio's wrapping, without the CUDA device ids a CPU module refuses."""

            def __init__(self, module, device_ids=None, **kwargs):
                super().__init__(module, broadcast_buffers=broadcast, **kwargs)

        base_pipeline.DDP = CPUDistributedDataParallel  # type: ignore[misc]
        sync_seconds: List[float] = []
        sync = callbacks_module.sync_observers

        def timed_sync(module):  # what the model's after-step callback calls, timed
            start = time.perf_counter()
            count = sync(module)
            sync_seconds.append(time.perf_counter() - start)
            return count

        callbacks_module.sync_observers = timed_sync  # type: ignore[assignment]

        preset = PRESETS["tiny"]
        config = trainer_config(nerf_qat.config, "cpu", self.workdir / "outputs", self.steps, preset)
        config.pipeline.model.quant.quant_start_step = self.quant_start_step
        config.pipeline.datamanager.dataparser = LLFFDataParserConfig(data=self.data, downscale_factor=4)
        config.steps_per_save = self.steps
        config.machine.num_devices = self.world_size
        config.machine.seed = self.seed
        if comms.is_main_process():
            config.save_config()  # as ns-train does before training
        torch.manual_seed(self.seed + self.rank)  # as nerfstudio's train_loop seeds each process
        trainer = config.setup(local_rank=self.rank, world_size=self.world_size)
        trainer.setup()
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        model = trainer.pipeline.model
        torch.save(model.state_dict(), self.workdir / f"rank{self.rank}.pt")
        return {
            "main_process": comms.is_main_process(),
            "train_s": seconds,
            "step_s": seconds / self.steps,
            "sync_s": sync_seconds,
            "config": str(self.workdir / "outputs" / "run" / "nerf-qat" / "run" / "config.yml"),
        }

    def observers(self) -> Dict[str, object]:
        """Batch ``i`` of rank ``r`` is known (a function of ``r`` and ``i``); fp32 warm-up, so what the observers see
        does not depend on the ranges: buffers must equal those of one process fed both ranks' batches."""
        from nerfqat_plugin.nerf.mlp import NeRFMLP
        from nerfqat_plugin.quant import QuantConfig, set_quant_state
        from nerfqat_plugin.quant.distributed import sync_observers

        torch.manual_seed(self.seed)  # the same initial weights on every rank
        mlp = NeRFMLP(63, 27, QuantConfig(observer_momentum=0.25), num_layers=3, layer_width=16, skip_layer=1,
                      view_width=8).train()  # fmt: skip
        set_quant_state(mlp, active=False, observe=True)
        with torch.no_grad():
            for step in range(self.steps):
                positions, directions = known_batch(self.rank, step)
                raw, trunk = mlp.density(positions)
                mlp.color(trunk, directions)
                sync_observers(mlp)
        return {"buffers": {k: v.tolist() for k, v in mlp.state_dict().items() if k.endswith(("min_val", "max_val"))}}


def known_batch(rank: int, step: int):
    """Encoded positions and directions of rank ``rank``'s batch ``step``: a fixed function of both."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    scale = 1.0 + rank + 0.5 * step  # the ranks' ranges differ, and change from step to step
    return torch.randn(64, 63, generator=g) * scale, torch.randn(64, 27, generator=g) * scale


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir: Path, world_size: int = 2, timeout: float = 600, **options) -> List[Dict[str, object]]:
    """Run ``world_size`` workers (``Worker`` options) as processes and return each rank's result."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for rank in range(world_size):
        args = [f"--rank={rank}", f"--world-size={world_size}", f"--port={port}", f"--workdir={workdir}"]
        for key, value in options.items():
            flag = key.replace("_", "-")
            args.append((f"--{flag}" if value else f"--no-{flag}") if isinstance(value, bool) else f"--{flag}={value}")
        log = open(workdir / f"rank{rank}.log", "w")
        cmd = [sys.executable, "-m", "nerfqat_plugin.tools.ddp", *args]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=command_env()), log))
    failed = []
    for rank, (proc, log) in enumerate(procs):
        try:
            proc.wait(timeout=timeout)
        finally:
            log.close()
        if proc.returncode != 0:
            failed.append(f"rank {rank} exited {proc.returncode}:\n{(workdir / f'rank{rank}.log').read_text()[-3000:]}")
    if failed:
        for proc, _ in procs:
            proc.kill()
        raise RuntimeError("\n".join(failed))
    return [json.loads((workdir / f"rank{rank}.json").read_text()) for rank in range(world_size)]


if __name__ == "__main__":
    tyro.cli(Worker).main()
