"""Shared fixtures: a tiny scene and a tiny nerf-qat run trained with the real ns-train CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.scenes import write_blender_scene

BIN = Path(sys.executable).parent
TINY_MODEL = [
    "--pipeline.model.num-layers", "2",
    "--pipeline.model.layer-width", "32",
    "--pipeline.model.skip-layer", "1",
    "--pipeline.model.view-width", "16",
    "--pipeline.model.num-coarse-samples", "8",
    "--pipeline.model.num-importance-samples", "8",
    "--pipeline.datamanager.train-num-rays-per-batch", "64",
    "--pipeline.datamanager.eval-num-rays-per-batch", "64",
    "--pipeline.model.quant.quant-start-step", "10",
]  # fmt: skip
"""Model and batch flags that make a nerf-qat run take seconds on a CPU."""


def ns(command: str, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run an installed console script (ns-train, ns-eval, ...) offline; fail with its output on error."""
    # an empty torch home: LPIPS weights are never there, whatever this machine has cached
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    env["TORCH_HOME"] = str(Path(cwd) / ".torch-home-empty")
    proc = subprocess.run(
        [str(BIN / command), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"{command} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def train_args(output_dir: Path, steps: int, extra: List[str] = ()) -> List[str]:
    """ns-train arguments for a tiny CPU run of nerf-qat (dataparser arguments follow in ``extra``)."""
    return [
        "nerf-qat",
        "--machine.device-type", "cpu",
        "--vis", "tensorboard",
        "--output-dir", str(output_dir),
        "--experiment-name", "tiny",
        "--max-num-iterations", str(steps),
        "--steps-per-save", str(steps),
        "--steps-per-eval-batch", "1000",
        "--steps-per-eval-image", "1000",
        "--steps-per-eval-all-images", "100000",
        *TINY_MODEL,
        *extra,
    ]  # fmt: skip


def find_config(output_dir: Path) -> Path:
    configs = sorted(output_dir.glob("tiny/nerf-qat/*/config.yml"))
    assert configs, f"no config.yml under {output_dir}"
    return configs[-1]


@pytest.fixture(scope="session")
def blender_scene(tmp_path_factory) -> Path:
    return write_blender_scene(tmp_path_factory.mktemp("scene") / "blender", size=32, views=4)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, blender_scene) -> Path:
    """config.yml of a 30-step nerf-qat run on the tiny Blender scene (do not modify: shared by tests)."""
    work = tmp_path_factory.mktemp("run")
    ns("ns-train", *train_args(work / "outputs", 30, ["blender-data", "--data", str(blender_scene)]), cwd=work)
    return find_config(work / "outputs")


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory, trained_run: Path) -> Path:
    """Directory of ``trained_run``'s int8 export by ns-export-int8 (config.yml inside); shared, do not modify."""
    out = tmp_path_factory.mktemp("export") / "int8"
    ns("ns-export-int8", "--load-config", str(trained_run), "--output-dir", str(out), cwd=out.parent)
    return out
