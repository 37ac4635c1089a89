"""Reading what a training run left on disk: its checkpoints, its configs, nerfstudio's logged events, and the
scene it was trained on."""

from __future__ import annotations

import statistics
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import yaml


def saved_steps(run_dir: Path) -> List[int]:
    """Steps of a run's complete checkpoints (a run stopped while saving leaves a file without its zip directory)."""
    ckpts = (run_dir / "nerfstudio_models").glob("step-*.ckpt")
    return sorted(int(p.stem.split("-")[1]) for p in ckpts if zipfile.is_zipfile(p))


def compared_step(saved: Dict[str, List[int]]) -> Tuple[Optional[int], str]:
    """The largest checkpoint step every run saved, and why (runs stopped at different steps are compared where
    all of them were)."""
    common = set.intersection(*(set(steps) for steps in saved.values())) if saved else set()
    last = {name: steps[-1] for name, steps in saved.items() if steps}
    if not common:
        return None, f"no checkpoint step saved by every run (last steps: {last})"
    step = max(common)
    if len(set(last.values())) == 1:
        return step, f"every run finished at step {step}"
    slowest = min(last, key=lambda k: last[k])
    return step, f"the largest checkpoint step all runs saved; runs reached {last} (slowest: {slowest})"


def config_at_step(config: Path, step: int) -> Path:
    """A copy of a run's config.yml beside it that loads the checkpoint of ``step``."""
    trainer_config = yaml.load(config.read_text(), Loader=yaml.Loader)
    trainer_config.load_step = step
    copy = config.with_name(f"config-step{step}.yml")
    copy.write_text(yaml.dump(trainer_config))
    return copy


def _events(run_dir: Path):
    """nerfstudio's tensorboard events of a run, loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc


def logged_rays_per_sec(run_dir: Path) -> Optional[float]:
    """Median of nerfstudio's logged 'Train Rays / Sec' over the second half of training."""
    acc = _events(run_dir)
    if "Train Rays / Sec" not in acc.Tags().get("scalars", []):
        return None
    events = acc.Scalars("Train Rays / Sec")
    half = [e.value for e in events if e.step >= events[-1].step / 2] or [e.value for e in events]
    return statistics.median(half)


def logged_window(run_dir: Path) -> Optional[Tuple[float, float]]:
    """Unix times of the first and last of nerfstudio's logged events (None: nothing logged)."""
    acc = _events(run_dir)
    times = [e.wall_time for tag in acc.Tags().get("scalars", []) for e in acc.Scalars(tag)]
    return (min(times), max(times)) if times else None


def mlp_fp32_bytes(run_dir: Path) -> int:
    """fp32 bytes of the coarse and fine MLP parameters in the run's checkpoint (no encodings, no LPIPS)."""
    ckpt = max((run_dir / "nerfstudio_models").glob("*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["pipeline"]
    fields = ("field_coarse", "field_fine")
    keep = [v for k, v in state.items() if any(f in k for f in fields) and k.endswith(("weight", "bias"))]
    return sum(v.numel() * 4 for v in keep)


def scene_bounds(data: Path, factor: int) -> Tuple[float, float]:
    """Near and far bounds of an LLFF scene in world space, as nerf-qat's dataparser reads them."""
    from nerfqat_plugin.llff import LLFFDataParserConfig

    meta = LLFFDataParserConfig(data=data, downscale_factor=factor, ndc=False).setup().get_dataparser_outputs("train")
    return float(meta.metadata["near_plane"]), float(meta.metadata["far_plane"])
