"""LLFF dataparser: pose conventions, scaling, splits, bad input, the real fern scene and a CLI run on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nerfstudio.data.dataparsers.base_dataparser import transform_poses_to_original_space

from nerfqat_plugin.llff import LLFFDataParserConfig, average_pose, llff_to_opengl
from nerfqat_plugin.tools.runs import CommandFailed, find_config
from nerfqat_plugin.tools.scenes import write_llff_scene
from tests.conftest import eval_in_process, run_ns, train_args

FERN = Path(__file__).parents[2] / "shared/data/nerf_llff_data/fern"
needs_fern = pytest.mark.skipif(not (FERN / "poses_bounds.npy").is_file(), reason=f"fern scene not found at {FERN}")


def _outputs(root: Path, split: str = "train", **overrides):
    cfg = LLFFDataParserConfig(data=root, downscale_factor=overrides.pop("downscale_factor", 4), **overrides)
    return cfg.setup().get_dataparser_outputs(split)


# --- pose math ---------------------------------------------------------------------------------------------------


def test_llff_columns_become_opengl_columns():
    # a camera at (1, 2, 3) looking along world -x: OpenGL right = -z, up = +y, back = +x.
    # LLFF stores [down, right, back] = [-up, right, back] = [(0,-1,0), (0,0,-1), (1,0,0)]
    llff = np.array(
        [
            [0.0, 0.0, 1.0, 1.0],
            [-1.0, 0.0, 0.0, 2.0],
            [0.0, -1.0, 0.0, 3.0],
        ]
    )
    expected = np.array(
        [
            [0.0, 0.0, 1.0, 1.0],
            [0.0, 1.0, 0.0, 2.0],
            [-1.0, 0.0, 0.0, 3.0],
        ]
    )
    np.testing.assert_array_equal(llff_to_opengl(llff[None])[0], expected)


def test_average_pose_of_two_mirrored_cameras():
    # cameras at x = -1 and x = +1, yawed by +0.3 and -0.3 rad about y: their back axes (+-sin, 0, cos) average
    # to +z, their up axes to +y, their centers to the origin, so the average pose is the identity
    c, s = np.cos(0.3), np.sin(0.3)
    left = np.array([[c, 0, s, -1.0], [0, 1, 0, 0.0], [-s, 0, c, 0.0]])
    right = np.array([[c, 0, -s, 1.0], [0, 1, 0, 0.0], [s, 0, c, 0.0]])
    np.testing.assert_allclose(average_pose(np.stack([left, right])), np.eye(4)[:3], atol=1e-12)


# --- synthetic scene ---------------------------------------------------------------------------------------------


def test_synthetic_scene_cameras_intrinsics_and_bounds(tmp_path):
    root = write_llff_scene(tmp_path / "scene", num_images=6, width=16, height=12, factor=4, focal=40.0)
    out = _outputs(root, eval_interval=3)
    assert [p.name for p in out.image_filenames] == ["frame_01.png", "frame_02.png", "frame_04.png", "frame_05.png"]
    # full-resolution focal 160 at 64 x 48 becomes 40 at the 16 x 12 found on disk
    assert out.cameras.fx.flatten().tolist() == [40.0] * 4
    assert out.cameras.cx[0].item() == 8.0 and out.cameras.cy[0].item() == 6.0
    assert (out.cameras.width[0].item(), out.cameras.height[0].item()) == (16, 12)
    # bounds (2, 10) rescaled so that the nearest is 1 / 0.75: scale 1 / 1.5
    assert out.dataparser_scale == pytest.approx(1 / 1.5)
    assert out.metadata["near_plane"] == pytest.approx(0.9 * 2 / 1.5)
    assert out.metadata["far_plane"] == pytest.approx(10 / 1.5)
    assert out.metadata["ndc"] is True
    assert out.metadata["ndc_params"] == {
        "focal_x": 40.0, "focal_y": 40.0, "width": 16.0, "height": 12.0, "near_plane": 1.0
    }  # fmt: skip
    test = _outputs(root, "test", eval_interval=3)
    assert [p.name for p in test.image_filenames] == ["frame_00.png", "frame_03.png"]
    assert test.metadata == out.metadata


def test_recentred_poses_map_back_to_the_original_ones(tmp_path):
    root = write_llff_scene(tmp_path / "scene", num_images=6)
    raw = np.load(root / "poses_bounds.npy")[:, :15].reshape(-1, 3, 5)[:, :, :4]
    # tilt the rig so that recentring has work to do
    angle = 0.4
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    tilted = np.concatenate([tilt @ raw[:, :, :3], (raw[:, :, 3] @ tilt.T + [5.0, -1.0, 2.0])[..., None]], -1)
    array = np.load(root / "poses_bounds.npy")
    array[:, :15] = np.concatenate([tilted, array[:, :15].reshape(-1, 3, 5)[:, :, 4:]], -1).reshape(-1, 15)
    np.save(root / "poses_bounds.npy", array)

    out = _outputs(root, eval_interval=0)
    c2w = out.cameras.camera_to_worlds
    # the rig is identical cameras, so after recentring every camera looks down -z from around the origin
    torch.testing.assert_close(c2w[:, :, :3], torch.eye(3).expand(6, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w[:, :, 3].mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    back = transform_poses_to_original_space(c2w, out.dataparser_transform, out.dataparser_scale, "opengl")
    expected = torch.from_numpy(llff_to_opengl(tilted)).float()
    torch.testing.assert_close(back, expected, atol=1e-5, rtol=0)


def test_no_holdout_and_non_ndc_scene_box(tmp_path):
    root = write_llff_scene(tmp_path / "scene", num_images=3)
    out = _outputs(root, eval_interval=0, ndc=False)
    assert len(out.image_filenames) == 3
    assert out.metadata["ndc"] is False
    far = out.metadata["far_plane"]
    assert (out.scene_box.aabb[1] - out.scene_box.aabb[0] >= 2 * far).all()


# --- bad input: one clear message each -----------------------------------------------------------------------------


def test_missing_poses_file(tmp_path):
    root = write_llff_scene(tmp_path / "scene")
    (root / "poses_bounds.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"poses_bounds\.npy not found"):
        _outputs(root)


def test_wrong_shape(tmp_path):
    root = write_llff_scene(tmp_path / "scene")
    np.save(root / "poses_bounds.npy", np.ones((6, 15)))
    with pytest.raises(ValueError, match=r"shape \(6, 15\), expected \(N, 17\)"):
        _outputs(root)


def test_pose_and_image_counts_differ(tmp_path):
    root = write_llff_scene(tmp_path / "scene", num_images=6)
    (root / "images_4" / "frame_05.png").unlink()
    with pytest.raises(ValueError, match="has 6 poses but .*images_4 has 5 images"):
        _outputs(root)


def test_missing_factor_folder_lists_the_existing_ones(tmp_path):
    root = write_llff_scene(tmp_path / "scene", factor=4)
    with pytest.raises(FileNotFoundError, match=r"images_8 not found for downscale factor 8 \(existing: images_4;"):
        _outputs(root, downscale_factor=8)


def test_no_image_folder_at_all(tmp_path):
    root = tmp_path / "scene"
    write_llff_scene(root, factor=4)
    for path in (root / "images_4").iterdir():
        path.unlink()
    (root / "images_4").rmdir()
    with pytest.raises(FileNotFoundError, match="no images\\* folder exists"):
        _outputs(root)


def test_unreadable_image_is_named(tmp_path):
    root = write_llff_scene(tmp_path / "scene")
    (root / "images_4" / "frame_03.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*frame_03\.png"):
        _outputs(root)


def test_ns_train_ends_with_the_message(tmp_path):
    root = write_llff_scene(tmp_path / "scene")
    (root / "poses_bounds.npy").unlink()
    args = train_args(tmp_path / "out", 1, ["llff-data", "--data", str(root)])
    with pytest.raises(CommandFailed) as failure:
        run_ns("ns-train", *args, cwd=tmp_path, timeout=60)
    last_line = str(failure.value).strip().splitlines()[-1]
    assert last_line.startswith("FileNotFoundError:") and "poses_bounds.npy not found" in last_line


# --- the real fern scene -------------------------------------------------------------------------------------------


@needs_fern
@pytest.mark.parametrize("factor, size", [(8, (504, 378)), (16, (252, 189))])
def test_fern_splits_and_sizes(factor, size):
    train = _outputs(FERN, downscale_factor=factor)
    test = _outputs(FERN, "test", downscale_factor=factor)
    assert len(train.image_filenames) == 17 and len(test.image_filenames) == 3
    all_names = sorted(p.name for p in (train.image_filenames + test.image_filenames))
    assert [all_names.index(p.name) for p in test.image_filenames] == [0, 8, 16]
    assert (int(train.cameras.width[0]), int(train.cameras.height[0])) == size
    assert train.metadata["ndc_params"]["width"] == size[0]


@needs_fern
def test_fern_cli_train_and_eval(tmp_path):
    args = train_args(tmp_path / "outputs", 3, ["llff-data", "--data", str(FERN), "--downscale-factor", "16"])
    run_ns("ns-train", *args, cwd=tmp_path, timeout=120)
    config = find_config(tmp_path / "outputs", "tiny", "nerf-qat")
    results = eval_in_process(config, tmp_path / "eval.json")
    assert np.isfinite(results["psnr"])
