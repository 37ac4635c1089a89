"""Catalogues of what the benchmarks train (entries by name), and the fern benchmark's: the methods it trains, their
variants (a name and flags) and its presets.

A method says how ns-train runs it; a variant is a method with flags on top. Adding a method or a variant means
adding an entry here: the runner reads what it needs from the entry, never from the name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional, Protocol, Tuple, TypeVar

from nerfqat_plugin.tools.runs import PRESETS, Preset


@dataclass(frozen=True)
class Method:
    """How ns-train runs a method on an LLFF scene."""

    name: str
    """ns-train's method name."""
    offline: bool
    """Run through nerfqat_plugin.offline (nerfstudio's own methods, which would download LPIPS weights)."""
    ndc: bool
    """Sample in NDC; else in world space between the scene's near and far bounds."""
    schedule_flag: Optional[str]
    """The flag that sets the learning-rate schedule's length to the steps trained (None: the method's own)."""


NERF_QAT = Method("nerf-qat", offline=False, ndc=True, schedule_flag="--optimizers.fields.scheduler.max-steps")
VANILLA_NERF = Method("vanilla-nerf", offline=True, ndc=False, schedule_flag=None)
"""nerfstudio's NeRF; it has no NDC."""


@dataclass(frozen=True)
class Variant:
    """A benchmarked configuration: a method and ns-train flags on top of the preset."""

    name: str
    method: Method
    flags: Tuple[str, ...] = ()
    quantized: bool = False
    """Exported with ns-export-int8 at the compared step and evaluated from the export too."""


def quant_flags(**flags: str) -> Tuple[str, ...]:
    """nerf-qat's ``--pipeline.model.quant.*`` flags."""
    return tuple(
        item for key, value in flags.items() for item in (f"--pipeline.model.quant.{key.replace('_', '-')}", value)
    )


def qat(name: str, **flags: str) -> Variant:
    """A nerf-qat variant trained with quantization on."""
    return Variant(name, NERF_QAT, quant_flags(**flags), quantized=True)


class Named(Protocol):
    """A catalogue entry: anything with a name."""

    @property
    def name(self) -> str: ...


Entry = TypeVar("Entry", bound=Named)


def catalogue(*entries: Entry) -> Dict[str, Entry]:
    """The entries by name, in their order; two entries of one name are an error."""
    names = [e.name for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"catalogue: more than one entry named {repeated}")
    return {e.name: e for e in entries}


VARIANTS: Dict[str, Variant] = catalogue(
    Variant("fp32", NERF_QAT, quant_flags(enabled="False")),
    qat("qat-w8a8-fused"),
    qat("qat-w8a8-unfused", fused="False"),
    qat("qat-w4a8-fused", weight_bits="4"),
    qat("qat-w3a8-fused", weight_bits="3"),
    qat("qat-w2a8-fused", weight_bits="2"),
    qat("qat-w8a8-fused-from0", quant_start_step="0"),
    qat("qat-w8a8-unfused-from0", fused="False", quant_start_step="0"),
    Variant("vanilla-nerf", VANILLA_NERF),
)
"""The '-from0' variants fake-quantize from the first step, as stock eager-mode QAT does (the paper's Table 1
setting)."""
VIEW_VARIANTS = ("fp32", "qat-w8a8-fused", "qat-w4a8-fused", "qat-w2a8-fused")
"""The renders of the test-view figure (the quantized ones from their int8 exports)."""


@dataclass(frozen=True)
class FernPreset:
    """How a benchmark trains: data, steps, checkpoints, the network, and whether runs share the device."""

    downscale_factor: int
    steps: int
    """Most steps a run trains (runs may be stopped earlier by ``train_seconds``)."""
    save_every: int
    """Checkpoint interval; every checkpoint is kept, so runs can be compared at a common step."""
    model: Preset
    parallel: bool
    """Train (and evaluate) all variants at once: one GPU is mostly idle with a single 1024-ray run."""
    train_seconds: Optional[float]
    """Wall time for training, after which runs still going are stopped (None: no limit)."""
    variants: Tuple[str, ...]


FERN_PRESETS: Dict[str, FernPreset] = {
    "cpu": FernPreset(
        16,
        1200,
        1200,
        replace(PRESETS["cpu"], sampler="hierarchical"),  # the paper's sampler, whatever nerf-qat's default
        False,
        None,
        (
            "fp32",
            "qat-w8a8-fused",
            "qat-w8a8-unfused",
            "qat-w4a8-fused",
            "qat-w3a8-fused",
            "qat-w2a8-fused",
            "vanilla-nerf",
        ),
    ),  # fmt: skip
    # one H100/H200 in a 10-minute slot: about 5 minutes of training, then exports and evaluations side by side
    "gpu": FernPreset(8, 50000, 250, replace(PRESETS["gpu"], sampler="hierarchical"), True, 300.0, tuple(VARIANTS)),
    # the harness end to end in seconds (tests): two variants at once on a tiny scene
    "tiny": FernPreset(
        4,
        6,
        2,
        replace(PRESETS["tiny"], quant_start_step=2, sampler="hierarchical"),
        True,
        None,
        ("fp32", "qat-w8a8-fused"),
    ),  # fmt: skip
}
