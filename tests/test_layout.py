"""Runs and exports written before the package split (nerf-qat's modules at the top of ``nerfqat_plugin``) keep
loading: their config.yml names the old module paths (``moved``).

The fixture ``tests/data/layout_0_1`` was written by version 0.1.0 (``expected.json`` says how): a tiny nerf-qat
run's config.yml and its integer export, with the held-out PSNR/SSIM that ns-eval gave then."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from nerfqat_plugin import moved
from nerfqat_plugin.tools.scenes import write_llff_scene
from tests.conftest import eval_in_process

FIXTURE = Path(__file__).parent / "data" / "layout_0_1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.mark.parametrize("old", sorted(moved.MOVED))
def test_an_old_module_path_gives_the_objects_of_the_new_one(old):
    module, new = importlib.import_module(old), importlib.import_module(moved.MOVED[old])
    public = [name for name in vars(new) if not name.startswith("_")]
    assert public and all(getattr(module, name) is getattr(new, name) for name in public)
    assert set(public) <= set(dir(module))
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_names_that_never_existed_still_fail_to_import():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("nerfqat_plugin.no_such_module")


def test_an_old_run_config_builds_todays_classes_and_saves_their_new_paths():
    from nerfqat_plugin.nerf.model import NeRFQATModel, NeRFQATModelConfig
    from nerfqat_plugin.nerf.occupancy import OccupancyConfig

    text = (FIXTURE / "run_config.yml").read_text()
    assert "nerfqat_plugin.model.NeRFQATModelConfig" in text  # written with the old layout
    config = yaml.load(text, Loader=yaml.Loader)  # as nerfstudio's eval_setup reads it
    model = config.pipeline.model
    assert type(model) is NeRFQATModelConfig and model._target is NeRFQATModel
    assert type(model.occupancy) is OccupancyConfig
    saved = yaml.dump(config)
    assert "nerfqat_plugin.nerf.model.NeRFQATModelConfig" in saved and "nerfqat_plugin.model." not in saved


def test_an_old_export_evaluates_as_it_did(tmp_path: Path):
    """ns-eval's computation on the moved export of 0.1.0, its scene written again where the config says (the
    config's scene folder edited, as a user does when the scene moved): the same PSNR and SSIM as then."""
    export = shutil.copytree(FIXTURE / "export", tmp_path / "export")
    scene = write_llff_scene(tmp_path / "scene", num_images=9)
    config = export / "config.yml"
    text = config.read_text()
    assert "nerfqat_plugin.model.NeRFQATModel" in text
    old = "".join(f"\n      - {part}" for part in Path(EXPECTED["scene_written_at"]).parts)
    assert text.count(old) == 1
    config.write_text(text.replace(old, "".join(f"\n      - {part}" for part in scene.parts)))
    results = eval_in_process(config, tmp_path / "eval.json")
    for key, value in EXPECTED["ns_eval"].items():
        assert results[key] == pytest.approx(value, abs=1e-4), key
