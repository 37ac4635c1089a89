"""Does QAT of the full 8x256 MLP survive without an fp32 warm-up? Train-set PSNR every 50 steps, per schedule.

    python scripts/qat_warmup_check.py --data ../shared/data/nerf_llff_data/fern --steps 800 \
        --schedules fast exact-eager fast-warmup300

fast: the defaults (compiled, fast matmuls), QAT from step 0; exact-eager: eager fp32 fake quantization from step 0;
fast-warmup300: the defaults with 300 fp32 steps first. 1024 rays, 64+128 samples, fern images_8, seed 42.
Prints the PSNR history and the fine MLP's trunk activation ranges (observer max) at the end.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import tyro

from nerfqat_plugin.tools.runs import PRESETS, train_step, trainer_config

FERN = Path(__file__).resolve().parents[2] / "shared/data/nerf_llff_data/fern"
SCHEDULES = {
    "fast": dict(fast="auto", compile=True, start=0),
    "exact-eager": dict(fast=False, compile=False, start=0),
    "fast-warmup300": dict(fast="auto", compile=True, start=300),
}


@dataclass
class WarmupCheck:
    data: Path = FERN
    """The fern folder."""
    steps: int = 800
    """Training steps per schedule."""
    schedules: List[str] = field(default_factory=lambda: list(SCHEDULES))
    """Which schedules to run."""
    device: Optional[str] = None
    """cpu or cuda; default: cuda when available."""

    def main(self) -> None:
        from nerfqat_plugin.llff import LLFFDataParserConfig
        from nerfqat_plugin.registration import nerf_qat

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        for name in self.schedules:
            s = SCHEDULES[name]
            work = Path(tempfile.mkdtemp(prefix="qat_warmup_"))
            config = trainer_config(nerf_qat.config, device, work, self.steps, PRESETS["gpu"])
            config.pipeline.datamanager.dataparser = LLFFDataParserConfig(data=self.data, downscale_factor=8)
            model = config.pipeline.model
            model.quant_fast_matmul, model.quant_compile = s["fast"], s["compile"]
            model.quant.quant_start_step = s["start"]
            config.machine.seed = 42
            torch.manual_seed(42)
            trainer = config.setup(local_rank=0, world_size=1)
            trainer.setup()
            start, history = time.time(), []
            for step in range(self.steps):
                metrics = train_step(trainer, step)
                if step % 50 == 0 or step == self.steps - 1:
                    history.append(f"{step}:{float(metrics['psnr']):.2f}")
            ranges = [round(float(layer.out_quant.max_val), 2) for layer in trainer.pipeline.model.field_fine.mlp.trunk]
            print(name, f"{time.time() - start:.0f}s", " ".join(history), "ranges", ranges, flush=True)
            del trainer


if __name__ == "__main__":
    tyro.cli(WarmupCheck).main()
