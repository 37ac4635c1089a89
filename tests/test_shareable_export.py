"""An export travels: copied elsewhere with its run and scene deleted it renders (MP4), loads in Python, and refuses
evaluation with one line saying where the images should be; bad inputs get one clear line and write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nerfqat_plugin.int8_format import WEIGHTS_FILE
from nerfqat_plugin.scene_record import RECORD_FILE
from nerfqat_plugin.tools.runs import CommandFailed
from nerfqat_plugin.tools.scenes import write_llff_scene
from tests.conftest import eval_in_process, run_ns

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ns-render needs ffmpeg: apt-get install ffmpeg"
)


def test_export_folder_holds_everything_and_the_config_no_absolute_path_into_it(moved_llff_export: Path):
    assert sorted(p.name for p in moved_llff_export.iterdir()) == [
        RECORD_FILE,
        "config.yml",
        WEIGHTS_FILE,
        "nerfstudio_models",
    ]
    # stored relative to the folder; nerfstudio's loader points them at wherever the folder is (outside it: as stored)
    config = yaml.load((moved_llff_export / "config.yml").read_text(), Loader=yaml.Loader)
    assert config.output_dir == Path(".") and config.pipeline.model.int8_weights == Path(WEIGHTS_FILE)
    assert config.pipeline.datamanager.dataparser.record == Path(RECORD_FILE)
    record = json.loads((moved_llff_export / RECORD_FILE).read_text())
    assert set(record["splits"]) == {"train", "val", "test"} and len(record["splits"]["train"]["images"]) == 7


@pytest.mark.parametrize("kind", ["llff", "blender"])
def test_camera_record_gives_back_the_dataparser_outputs_exactly(tmp_path: Path, kind: str):
    """Every camera field with its dtype (a float64 focal length stays float64), the scene box, the metadata."""
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    from nerfqat_plugin.llff import LLFFDataParserConfig
    from nerfqat_plugin.scene_record import ExportSceneDataParserConfig, record_bytes, scene_record
    from nerfqat_plugin.tools.scenes import write_blender_scene

    if kind == "llff":
        data = write_llff_scene(tmp_path / "scene", num_images=9)
        parser = LLFFDataParserConfig(data=data, downscale_factor=4).setup()
    else:
        data = write_blender_scene(tmp_path / "scene", size=16, views=3)
        parser = BlenderDataParserConfig(data=data).setup()
    outputs = {split: parser.get_dataparser_outputs(split) for split in ("train", "val", "test")}
    (tmp_path / RECORD_FILE).write_bytes(record_bytes(scene_record(outputs, data)))
    export = ExportSceneDataParserConfig(data=data, record=tmp_path / RECORD_FILE, weights=tmp_path / "none").setup()
    for split, expected in outputs.items():
        got = export.get_dataparser_outputs(split)
        assert got.image_filenames == [Path(p) for p in expected.image_filenames]
        for name in ("camera_to_worlds", "fx", "fy", "cx", "cy", "width", "height", "camera_type"):
            a, b = getattr(got.cameras, name), getattr(expected.cameras, name)
            assert a.dtype == b.dtype and torch.equal(a, b), (split, name)
        assert torch.equal(got.scene_box.aabb, expected.scene_box.aabb)
        assert {k: v for k, v in got.metadata.items() if k != "images_optional"} == dict(expected.metadata)
        assert torch.equal(got.dataparser_transform, expected.dataparser_transform.float())


@needs_ffmpeg
def test_moved_export_renders_an_mp4_without_the_dataset(moved_llff_export: Path, tmp_path: Path):
    import mediapy

    video = tmp_path / "fern.mp4"
    run_ns(
        "ns-render", "interpolate", "--load-config", str(moved_llff_export / "config.yml"),
        "--output-path", str(video), "--interpolation-steps", "3", "--frame-rate", "6", cwd=tmp_path,
    )  # fmt: skip
    frames = mediapy.read_video(str(video))
    assert len(frames) == 3  # 3 steps from the first to the second of the 2 held-out cameras
    assert frames.shape[1:3] == (12, 16)
    for frame in frames:  # the scene is a colour gradient: no frame is empty or flat
        assert frame.std() > 5 and 10 < frame.mean() < 245


def test_moved_export_loads_in_python_and_renders_a_training_view(moved_llff_export: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    from nerfqat_plugin.quant.int8 import IntLinear

    config, pipeline, _, _ = eval_setup(moved_llff_export / "config.yml", test_mode="inference")
    assert Path(config.pipeline.model.int8_weights) == moved_llff_export / WEIGHTS_FILE
    assert any(isinstance(m, IntLinear) for m in pipeline.model.modules())
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    rgb = pipeline.model.get_outputs_for_camera(camera)["rgb"]
    assert rgb.shape == (12, 16, 3) and torch.isfinite(rgb).all()


def test_ns_eval_without_the_images_fails_with_one_line_naming_the_folder(moved_llff_export: Path, tmp_path: Path):
    output = tmp_path / "eval.json"
    with pytest.raises(CommandFailed) as failure:
        run_ns("ns-eval", "--load-config", str(moved_llff_export / "config.yml"), "--output-path", str(output),
               cwd=tmp_path)  # fmt: skip
    last = str(failure.value).strip().splitlines()[-1]
    assert last.startswith("FileNotFoundError: evaluation needs the ground-truth images")
    assert "images_4 is not there" in last and "set `data:` under `dataparser:`" in last
    assert not output.exists()


def test_ns_eval_works_once_the_config_points_at_the_scene(moved_llff_export: Path, tmp_path: Path):
    export = tmp_path / "export"
    shutil.copytree(moved_llff_export, export)
    scene = write_llff_scene(tmp_path / "scene-restored", num_images=9)  # the same scene, written again elsewhere
    config_file = export / "config.yml"
    config = yaml.load(config_file.read_text(), Loader=yaml.Loader)
    config.pipeline.datamanager.dataparser.data = scene  # what the error line tells a user to edit
    config_file.write_text(yaml.dump(config))
    assert np.isfinite(eval_in_process(config_file, tmp_path / "eval.json")["psnr"])


def _render(config: Path, cwd: Path) -> Path:
    out = cwd / "frames"
    run_ns("ns-render", "interpolate", "--load-config", str(config), "--output-path", str(out),
           "--output-format", "images", "--interpolation-steps", "1", cwd=cwd)  # fmt: skip
    return out


def test_export_without_its_weights_file_fails_with_one_line(moved_llff_export: Path, tmp_path: Path):
    export = tmp_path / "export"
    shutil.copytree(moved_llff_export, export)
    (export / WEIGHTS_FILE).unlink()
    with pytest.raises(CommandFailed) as failure:
        _render(export / "config.yml", tmp_path)
    last = str(failure.value).strip().splitlines()[-1]
    assert f"{export / WEIGHTS_FILE}: integer export file not found" in last
    assert not (tmp_path / "frames").exists()


def test_export_whose_camera_record_does_not_match_its_weights_fails_with_one_line(
    moved_llff_export: Path, tmp_path: Path
):
    export = tmp_path / "export"
    shutil.copytree(moved_llff_export, export)
    record = json.loads((export / RECORD_FILE).read_text())
    record["dataparser_scale"] *= 2  # another scene's record
    (export / RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(CommandFailed) as failure:
        _render(export / "config.yml", tmp_path)
    last = str(failure.value).strip().splitlines()[-1]
    assert f"{export / RECORD_FILE}: this camera record is not the one the weights were exported with" in last
    assert not (tmp_path / "frames").exists()


def test_exporting_a_config_of_another_method_fails_with_one_line(trained_run: Path, tmp_path: Path):
    config = yaml.load(trained_run.read_text(), Loader=yaml.Loader)
    config.method_name = "vanilla-nerf"
    other = tmp_path / "config.yml"
    other.write_text(yaml.dump(config))
    with pytest.raises(CommandFailed) as failure:
        run_ns("ns-export-int8", "--load-config", str(other), "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert "a config of method 'vanilla-nerf', not nerf-qat" in " ".join(str(failure.value).split())
    assert not (tmp_path / "out").exists()


def test_export_written_by_the_previous_version_still_loads_where_it_is(
    exported_run: Path, trained_run: Path, tmp_path: Path
):
    """Before camera records, an export's config held absolute paths and the run's own dataparser."""
    old = tmp_path / "old-export"
    shutil.copytree(exported_run, old)
    (old / RECORD_FILE).unlink()
    config = yaml.load((old / "config.yml").read_text(), Loader=yaml.Loader)
    run = yaml.load(trained_run.read_text(), Loader=yaml.Loader)
    config.pipeline.datamanager.dataparser = run.pipeline.datamanager.dataparser
    config.output_dir = old
    config.pipeline.model.int8_weights = old / WEIGHTS_FILE
    (old / "config.yml").write_text(yaml.dump(config))
    assert np.isfinite(eval_in_process(old / "config.yml", tmp_path / "eval.json")["psnr"])
