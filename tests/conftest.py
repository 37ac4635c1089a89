"""Shared fixtures: a tiny scene and a tiny nerf-qat run trained with the real ns-train CLI."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import List, Sequence

import pytest

from nerfqat_plugin.tools.runs import PRESETS, find_config, ns, train_flags
from nerfqat_plugin.tools.scenes import write_blender_scene, write_llff_scene


def run_ns(command: str, *args: str, cwd: Path, timeout: float = 600) -> str:
    """An installed console script (ns-train, ns-eval, ...) run offline, with an empty torch home (LPIPS weights
    are never there, whatever this machine has cached); its output, or ``CommandFailed``."""
    return ns(command, *args, cwd=cwd, timeout=timeout, env={"TORCH_HOME": str(Path(cwd) / ".torch-home-empty")})


def eval_in_process(config: Path, output: Path) -> dict:
    """What ns-eval computes and writes (nerfstudio's ``ComputePSNR``, the console script's own entry), run in this
    process: the ``results`` of ``output``. It saves the ~12 s a console script spends starting (nerfstudio builds
    its method list, ``nerfqat_plugin.startup``); the tests of ns-eval's own output and exit status use ``run_ns``."""
    from nerfstudio.scripts.eval import ComputePSNR

    ComputePSNR(load_config=Path(config), output_path=Path(output)).main()
    return json.loads(Path(output).read_text())["results"]


def load_file(path: Path) -> ModuleType:
    """A Python file that is not in a package (a script, the docs' decoder) imported as a module of its own name.
    Its folder goes on ``sys.path`` (last, so that it shadows nothing), as when Python runs it: a script imports the
    modules beside it (``benchlib``)."""
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def train_args(output_dir: Path, steps: int, extra: Sequence[str] = ()) -> List[str]:
    """ns-train arguments for a tiny CPU run of nerf-qat (dataparser arguments follow in ``extra``)."""
    return [*train_flags("cpu", output_dir, "tiny", steps, preset=PRESETS["tiny"]), *extra]


HIERARCHICAL = ["--pipeline.model.sampler", "hierarchical"]
"""ns-train flags of a run with the paper's coarse + fine sampler."""
OCCUPANCY = ["--pipeline.model.sampler", "occupancy", "--pipeline.model.occupancy.resolution", "16"]
"""ns-train flags of a tiny run with the occupancy sampler (a 16^3 grid)."""


@pytest.fixture(scope="session")
def blender_scene(tmp_path_factory) -> Path:
    return write_blender_scene(tmp_path_factory.mktemp("scene") / "blender", size=32, views=4)


def _tiny_run(tmp_path_factory, folder: str, extra: Sequence[str]) -> Path:
    """config.yml of a 30-step tiny nerf-qat run trained by ns-train in a fresh folder (``extra``: sampler and
    dataparser arguments)."""
    work = tmp_path_factory.mktemp(folder)
    run_ns("ns-train", *train_args(work / "outputs", 30, extra), cwd=work)
    return find_config(work / "outputs", "tiny", "nerf-qat")


def export_in_process(config: Path, out: Path) -> Path:
    """What ns-export-int8 writes (its entry point's ``ExportInt8``, run in this process as ``eval_in_process``
    does for ns-eval; the console script itself is run by the tests of its output and exit status): ``out``."""
    from nerfqat_plugin.export import ExportInt8

    ExportInt8(load_config=Path(config), output_dir=Path(out)).main()
    return Path(out)


def _int8_export(tmp_path_factory, folder: str, config: Path) -> Path:
    """Directory of the int8 export of the run of ``config``, in a fresh folder."""
    return export_in_process(config, tmp_path_factory.mktemp(folder) / "int8")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, blender_scene) -> Path:
    """config.yml of a 30-step nerf-qat run with the hierarchical sampler on the tiny Blender scene (do not modify:
    shared by tests)."""
    return _tiny_run(tmp_path_factory, "run", [*HIERARCHICAL, "blender-data", "--data", str(blender_scene)])


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory, trained_run: Path) -> Path:
    """Directory of ``trained_run``'s int8 export (config.yml inside); shared, do not modify."""
    return _int8_export(tmp_path_factory, "export", trained_run)


@pytest.fixture(scope="session")
def occupancy_run(tmp_path_factory, blender_scene) -> Path:
    """config.yml of a 30-step nerf-qat run with the occupancy sampler on the tiny Blender scene (shared)."""
    return _tiny_run(tmp_path_factory, "occupancy-run", [*OCCUPANCY, "blender-data", "--data", str(blender_scene)])


@pytest.fixture(scope="session")
def occupancy_export(tmp_path_factory, occupancy_run: Path) -> Path:
    """Directory of ``occupancy_run``'s int8 export (shared, do not modify)."""
    return _int8_export(tmp_path_factory, "occupancy-export", occupancy_run)


@pytest.fixture(scope="session")
def moved_llff_export(tmp_path_factory) -> Path:
    """The int8 export of a tiny forward-facing (LLFF, NDC) run with the occupancy sampler, copied to a fresh folder;
    the original export, the training run and the scene are deleted (shared, do not modify)."""
    work = tmp_path_factory.mktemp("llff-run")
    scene = write_llff_scene(work / "scene", num_images=9)
    data = ["llff-data", "--data", str(scene), "--downscale-factor", "4"]
    run_ns("ns-train", *train_args(work / "outputs", 30, [*OCCUPANCY, *data]), cwd=work)
    config = find_config(work / "outputs", "tiny", "nerf-qat")
    export_in_process(config, work / "export")
    moved = tmp_path_factory.mktemp("elsewhere") / "fern-int8"
    shutil.copytree(work / "export", moved)
    shutil.rmtree(work)
    return moved


NERFACTO_TINY = [
    "--pipeline.datamanager.train-num-rays-per-batch", "64",
    "--pipeline.model.eval-num-rays-per-chunk", "1024",
    "--pipeline.model.num-levels", "4",
    "--pipeline.model.log2-hashmap-size", "10",
    "--pipeline.model.max-res", "64",
    "--pipeline.model.hidden-dim", "16",
    "--pipeline.model.hidden-dim-color", "16",
    "--pipeline.model.num-nerf-samples-per-ray", "8",
    "--pipeline.model.num-proposal-samples-per-ray", "8", "8",
    "--pipeline.model.table-bits", "4",
    "--pipeline.model.quant.quant-start-step", "4",
    "--pipeline.model.quant-compile", "False",
]  # fmt: skip
"""ns-train flags of a tiny nerfacto-qat model (4 levels of 2^10 rows, 4-bit tables, QAT from step 4)."""


@pytest.fixture(scope="session")
def nerfacto_run(tmp_path_factory, blender_scene) -> Path:
    """config.yml of a 12-step tiny nerfacto-qat run by ns-train on the tiny Blender scene (shared, do not modify)."""
    work = tmp_path_factory.mktemp("nerfacto-run")
    args = [
        "nerfacto-qat", "--machine.device-type", "cpu", "--vis", "tensorboard",
        "--output-dir", str(work / "outputs"), "--experiment-name", "tiny",
        "--max-num-iterations", "12", "--steps-per-save", "12", "--steps-per-eval-batch", "1000",
        "--steps-per-eval-image", "1000", "--steps-per-eval-all-images", "1000",
        *NERFACTO_TINY, "blender-data", "--data", str(blender_scene),
    ]  # fmt: skip
    run_ns("ns-train", *args, cwd=work)
    return find_config(work / "outputs", "tiny", "nerfacto-qat")


@pytest.fixture(scope="session")
def nerfacto_export(tmp_path_factory, nerfacto_run: Path) -> Path:
    """Directory of ``nerfacto_run``'s integer export (shared, do not modify)."""
    return _int8_export(tmp_path_factory, "nerfacto-export", nerfacto_run)
