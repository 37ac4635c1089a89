"""nerfstudio's vanilla-nerf trained and evaluated offline through ``python -m nerfqat_plugin.offline``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nerfqat_plugin.offline import main
from nerfqat_plugin.tools.runs import Preset, offline, train_flags


def _offline(*args: str, cwd: Path) -> None:
    offline(*args, cwd=cwd, env={"TORCH_HOME": str(cwd / ".torch-home-empty")})


def test_vanilla_nerf_trains_and_evaluates_without_lpips_weights(blender_scene: Path, tmp_path: Path):
    preset = Preset(2, 32, 1, 16, coarse_samples=4, fine_samples=4, rays=16)
    flags = train_flags("cpu", tmp_path / "out", "v", 2, preset, method="vanilla-nerf", timestamp="run")
    _offline("ns-train", *flags, "blender-data", "--data", str(blender_scene), cwd=tmp_path)
    config = tmp_path / "out/v/vanilla-nerf/run/config.yml"
    _offline("ns-eval", "--load-config", str(config), "--output-path", str(tmp_path / "eval.json"), cwd=tmp_path)
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert math.isfinite(results["psnr"])
    assert math.isnan(results["fine_lpips"])  # not computable offline: NaN, never a made-up number


def test_unknown_command_is_refused():
    with pytest.raises(SystemExit, match="usage"):
        main(["ns-render"])
