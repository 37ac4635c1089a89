"""ns-viewer in a real browser: headless Chromium shows nerf-qat's renders of a trained run and of its int8 export.

Each case starts ``ns-viewer`` on 127.0.0.1, opens it in headless Chromium, waits for the first rendered frame, and
checks that the render area shows what the model renders from the viewer's start camera (RGB, then other outputs
picked in the control panel), and that the server logs no error. Screenshots go to $NERFQAT_ARTIFACTS (default: the
test's tmp_path) as viewer-trained*.png and viewer-int8*.png; the ones in docs/ come from scripts/viewer_screenshots.py
(a longer-trained model, full-resolution frame).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pytest

from nerfqat_plugin.tools.browser import (
    ExpectedFrames,
    Frame,
    ViewerPage,
    camera_view,
    chromium,
    difference,
    downsample,
    full_resolution,
    missing_browser,
    start_camera,
    viewer_server,
)

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))

FIRST_FRAME_TIMEOUT = 150.0
"""Seconds from page load to the first rendered frame (the int8 export compiles its layers on first render)."""
RENDERED = 40.0
"""A render area this far from the empty background (mean absolute difference, 0-255 levels) shows a frame."""
SAME = 6.0
"""Render area and expected frame, box-filtered to 16x12, differ by less than this when they show the same image."""
SWITCH_TIMEOUT = 60.0
"""Seconds for the viewer to show another output after it is picked in the control panel."""
MATCH_TIMEOUT = 10.0
"""Seconds a full-resolution frame that is not the model's render may stay on screen unchanged before the test fails
(a frame from before the start camera was placed is replaced by new ones, each of which restarts the count)."""
RENDER_TIMEOUT = 300.0
"""Seconds for the viewer to settle on a full-resolution frame of an output: it may time and compile kernels for new
tile sizes first, and a busy machine slows it several-fold; a finished, unchanging frame is not waited for."""


@pytest.fixture(scope="module")
def trained_model(trained_run: Path):
    """The trained model, loaded here to render what the viewer should show (the int8 export renders the same)."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(trained_run, test_mode="inference")
    return pipeline.model


def _artifact(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("NERFQAT_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _show(page: ViewerPage, expected: ExpectedFrames, name: str, shown: Optional[np.ndarray]) -> Frame:
    """Pick output ``name`` (unless ``shown`` is None: the default output) and wait until the model's render of it
    is on screen; ``shown`` is the box-filtered render area before."""
    if shown is not None:
        page.choose_output(name)
        page.wait_for(
            lambda area, res: difference(downsample(area), shown) > RENDERED / 2,
            SWITCH_TIMEOUT,
            f"the render area to change after picking {name!r}",
        )
    shot, resolution = page.wait_for(
        lambda area, res: expected.difference(area, res, name) < SAME,
        MATCH_TIMEOUT,
        f"the model's {name!r} render from the start camera",
        explain=lambda area, res: f"differs from it by {expected.difference(area, res, name):.1f} levels",
        ready=full_resolution,
        ready_timeout=RENDER_TIMEOUT,
    )
    print(f"{name}: frame {resolution}, {expected.difference(page.render_area(shot), resolution, name):.2f} levels")
    return shot, resolution


def _check_viewer(
    config: Path, model, tmp_path: Path, stem: str, outputs: Sequence[str], camera: Callable = start_camera
) -> None:
    """ns-viewer on ``config`` in Chromium shows ``model``'s ``outputs`` (the first one is shown by default) from
    ``camera`` (``(width, height) -> Cameras``, default: the viewer's own start camera)."""
    start = time.monotonic()
    with viewer_server(config, tmp_path / "viewer.log") as server, chromium(tmp_path / "profile") as page:
        page.open(server.url)
        opened = time.monotonic()
        background = page.empty_background()
        page.wait_for(
            lambda area, res: difference(area, background) > RENDERED, FIRST_FRAME_TIMEOUT, "a rendered frame"
        )
        first_frame = time.monotonic()
        expected = ExpectedFrames(model, page.canvas_box()[2:], camera)
        shown = None
        for name in outputs:
            try:
                shot, _ = _show(page, expected, name, shown)
            except AssertionError as err:  # a render thread that died says why in the server's log
                raise AssertionError(f"{err}\nns-viewer's log:\n{server.log_text()[-4000:]}") from None
            shot.save(_artifact(tmp_path, f"{stem}.png" if shown is None else f"{stem}-{name}.png"))
            shown = downsample(page.render_area(shot))
        assert not server.problems(), f"while the browser was connected:\n{server.log_text()}"
    assert server.proc.returncode is not None
    assert not server.problems(), server.log_text()
    print(
        f"{stem}: page connected {opened - start:.1f} s, first frame +{first_frame - opened:.1f} s, "
        f"total {time.monotonic() - start:.1f} s"
    )


def test_viewer_shows_trained_run(trained_run: Path, trained_model, tmp_path: Path):
    _check_viewer(trained_run, trained_model, tmp_path, "viewer-trained", ("rgb", "depth", "accumulation"))


def test_viewer_opens_a_moved_int8_export_of_a_forward_facing_scene_on_a_training_camera(
    moved_llff_export: Path, tmp_path: Path
):
    """The export alone (its run and scene deleted): the first frame is the render from the training camera nearest
    the mean camera position, not from nerfstudio's default view."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(moved_llff_export / "config.yml", test_mode="inference")
    start = pipeline.datamanager.viewer_start
    assert start is not None
    cameras = pipeline.datamanager.train_dataset.cameras
    # the scene's cameras sit on a 3 x 3 grid (x in -0.2..0.2, y in 0..0.2); images 0 and 8 are held out, so the mean
    # of the seven training cameras is the grid's centre (0, 0.1), where image 4, the fourth training image, is
    assert start.index == 3
    view = camera_view(cameras.camera_to_worlds[start.index], start.vertical_fov)
    _check_viewer(moved_llff_export / "config.yml", pipeline.model, tmp_path, "viewer-int8", ("rgb", "depth"), view)


def test_viewer_shows_a_nerfacto_qat_export(nerfacto_export: Path, tmp_path: Path):
    """nerfacto-qat's integer export (tables of codes, integer MLPs) in the viewer: what the export renders."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(nerfacto_export / "config.yml", test_mode="inference")
    _check_viewer(nerfacto_export / "config.yml", pipeline.model, tmp_path, "viewer-nerfacto-int8", ("rgb",))
