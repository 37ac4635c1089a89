"""Drive ns-viewer from a real browser: the server on loopback, headless Chromium, what the render area shows.

Used by tests/test_viewer.py and scripts/viewer_screenshots.py. Needs Debian's ``chromium`` and ``chromedriver``
(``apt-get install chromium chromium-driver``) and the ``selenium`` package; no browser is ever downloaded.
"""

from __future__ import annotations

import io
import math
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from nerfqat_plugin.tools.runs import command_env, tool

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "install them with `apt-get install chromium chromium-driver` (the Makefile's system-deps target)"
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # The viewer page asks for Google Tag Manager and the nerfstudio logo on the internet: resolve no host name but
    # the loopback address, so the browser never leaves this machine.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]

# The camera of a fresh viewer tab in nerfstudio world coordinates: viser's client puts its three.js camera (vertical
# field of view 75 degrees, the three.js default) 3 viser units from the origin along each axis, looking at the
# origin with +z up, and nerfstudio divides viser positions by 10 (VISER_NERFSTUDIO_SCALE_RATIO).
START_POSITION = (0.3, 0.3, 0.3)
START_FOV_DEG = 75.0
FULL_RES = 512
"""nerfstudio's default "Max res": the size of the frame the viewer renders once the camera has stopped."""
JPEG_QUALITIES = (40, 75)
"""The viewer sends frames as JPEG, at quality 40 while the camera moves and 75 (ViewerConfig.jpeg_quality) after."""
FRAME_CHANGED = 1.0
"""Box-filtered (16x12) render areas of two screenshots differ by more than this (mean, 0-255 levels) when the viewer
has put a new frame on screen; the same frame sent again (JPEG) stays well below it."""
MARGIN = 0.15
"""Part of the canvas left out on each side when measuring the render (keeps out the axes widget, bottom left)."""


def missing_browser() -> Optional[str]:
    """Why a browser test cannot run here, or None when it can."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        return f"the viewer browser test needs {', '.join(missing)}: {INSTALL_HINT}"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the server ----------------------------------------------------------------------------------------------------


class ViewerServer:
    """A running ``ns-viewer`` subprocess bound to 127.0.0.1, its output going to ``log``."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def problems(self) -> List[str]:
        """Log lines that report a failure: tracebacks, errors, exceptions."""
        return [line for line in self.log_text().splitlines() if re.search(r"traceback|error|exception", line, re.I)]


def _serves(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to loopback, never a proxy
    try:
        with opener.open(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def viewer_server(config: Path, log: Path, timeout: float = 180.0) -> Iterator[ViewerServer]:
    """Start ``ns-viewer`` on ``config``, wait until it serves its page, and stop it (and its children) on exit."""
    port = free_port()
    env = command_env()
    args = [
        tool("ns-viewer"),
        "--load-config", str(config),
        "--viewer.websocket-host", "127.0.0.1",
        "--viewer.websocket-port", str(port),
    ]  # fmt: skip
    with open(log, "w") as out:
        # a session of its own: stopping its process group also stops any worker it started
        proc = subprocess.Popen(
            args, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = ViewerServer(proc, port, log)
    try:
        deadline = time.monotonic() + timeout
        while not _serves(server.url):
            if proc.poll() is not None:
                raise AssertionError(f"ns-viewer exited with {proc.returncode} before serving:\n{server.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"ns-viewer did not serve {server.url} in {timeout:.0f} s:\n{server.log_text()}")
            time.sleep(0.5)
        yield server
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the server's process group and wait; SIGKILL the group if anything of it is left after ``grace``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # a hung server, or a worker of it that outlived it
    except ProcessLookupError:
        pass
    proc.wait(timeout=grace)


# --- the browser ---------------------------------------------------------------------------------------------------


@contextmanager
def chromium(profile: Path, size: Tuple[int, int] = (800, 600)) -> Iterator["ViewerPage"]:
    """Headless Chromium with a fresh profile in ``profile``, as a :class:`ViewerPage`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*BROWSER_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield ViewerPage(driver)
    finally:
        driver.quit()


Frame = Tuple[Image.Image, Optional[Tuple[int, int]]]
"""A screenshot and the (width, height) of the rendered frame it shows, as the viewer reports it."""


class ViewerPage:
    """The viewer's web page: its 3D canvas, the render drawn there, and the control panel."""

    def __init__(self, driver):
        self.driver = driver

    def open(self, url: str, timeout: float = 60.0) -> None:
        """Load the viewer and wait until its websocket is connected."""
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.get(url)
        WebDriverWait(self.driver, timeout).until(lambda d: "Connected" in self._text())

    def _text(self) -> str:
        return self.driver.find_element("tag name", "body").text

    def _canvas(self):
        return self.driver.find_element("css selector", "canvas[data-engine^='three.js']")

    def canvas_box(self) -> Tuple[int, int, int, int]:
        """(left, top, width, height) of the 3D canvas in screenshot pixels."""
        rect = self._canvas().rect
        scale = self.driver.execute_script("return window.devicePixelRatio")
        return tuple(round(rect[k] * scale) for k in ("x", "y", "width", "height"))  # type: ignore[return-value]

    def empty_background(self) -> np.ndarray:
        """RGB the viewer shows where nothing is rendered: the background of the element behind the canvas."""
        css = self.driver.execute_script(
            """
            for (let el = arguments[0]; el; el = el.parentElement) {
                const c = getComputedStyle(el).backgroundColor;
                if (c && c !== 'transparent' && !c.startsWith('rgba(0, 0, 0, 0')) return c;
            }
            return null;
            """,
            self._canvas(),
        )
        assert css, "no background colour behind the viewer's canvas"
        return np.array([float(v) for v in re.findall(r"[\d.]+", css)[:3]])

    def resolution(self) -> Optional[Tuple[int, int]]:
        """(width, height) of the last frame, from the viewer's "Resolution: WxHpx" line; None before a frame
        (no line yet, or the 0x0 the viewer can show while it sizes its first frame)."""
        match = re.search(r"Resolution:\s*(\d+)\D(\d+)px", self._text())
        if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
            return None
        return int(match.group(1)), int(match.group(2))

    def frame(self) -> Frame:
        """A screenshot and the frame resolution, read before and after it until both reads agree."""
        while True:
            before = self.resolution()
            shot = Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB")
            if self.resolution() == before:
                return shot, before

    def render_area(self, shot: Image.Image) -> np.ndarray:
        """The canvas without its margins (see MARGIN) as float RGB in [0, 255], shape [H, W, 3]."""
        left, top, width, height = self.canvas_box()
        dx, dy = round(MARGIN * width), round(MARGIN * height)
        return np.asarray(shot.crop((left + dx, top + dy, left + width - dx, top + height - dy)), dtype=np.float64)

    def wait_for(
        self,
        condition: Callable[[np.ndarray, Optional[Tuple[int, int]]], bool],
        timeout: float,
        what: str,
        explain: Callable[[np.ndarray, Optional[Tuple[int, int]]], str] = lambda area, res: "",
        poll: float = 0.5,
        ready: Optional[Callable[[Optional[Tuple[int, int]]], bool]] = None,
        ready_timeout: float = 0.0,
    ) -> Frame:
        """Take frames until ``condition(render area, resolution)`` holds; the frame that satisfied it.

        With ``ready`` (a predicate on the frame's resolution, e.g. ``full_resolution``), ``timeout`` counts from
        the moment the last change of the screen left a ready frame on it: a viewer that is still rendering
        (compiling, slowed by a busy machine, or sending new frames after its camera moved) is waited for, up to
        ``ready_timeout`` seconds in all; one that keeps showing the same finished frame is not."""
        start = time.monotonic()
        deadline = None if ready is not None else start + timeout
        settled: Optional[Tuple[np.ndarray, Optional[Tuple[int, int]]]] = None  # the ready frame on screen
        while True:
            shot, resolution = self.frame()
            area = self.render_area(shot)
            if condition(area, resolution):
                return shot, resolution
            now = time.monotonic()
            if ready is not None:
                small = downsample(area)
                if not ready(resolution):
                    deadline, settled = None, None
                elif settled is None or settled[1] != resolution or difference(small, settled[0]) > FRAME_CHANGED:
                    deadline, settled = now + timeout, (small, resolution)
                if now > start + ready_timeout:
                    state = "a full-resolution frame that kept changing" if deadline else "a full-resolution frame"
                    raise AssertionError(
                        f"waited {ready_timeout:.0f} s for the viewer to finish rendering ({state}) before {what}: "
                        f"frame {resolution}, render area mean colour {area.mean((0, 1)).round(1)} "
                        f"{explain(area, resolution)}"
                    )
            if deadline is not None and now > deadline:
                raise AssertionError(
                    f"waited {timeout:.0f} s{' with the same full-resolution frame on screen' if ready else ''} for "
                    f"{what}: frame {resolution}, render area mean colour {area.mean((0, 1)).round(1)} "
                    f"{explain(area, resolution)}"
                )
            time.sleep(poll)

    def choose_output(self, name: str) -> None:
        """Pick ``name`` in the control panel's "Output type" dropdown."""
        from selenium.webdriver.support.ui import WebDriverWait

        label = self.driver.find_element("xpath", "//label[normalize-space(text())='Output type']")
        field_ = self.driver.find_element("id", label.get_attribute("for"))
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", field_)
        field_.click()
        option = WebDriverWait(self.driver, 10).until(
            lambda d: next((o for o in d.find_elements("css selector", "[role=option]") if o.text == name), None)
        )
        option.click()
        WebDriverWait(self.driver, 10).until(lambda d: field_.get_attribute("value") == name)


def full_resolution(resolution: Optional[Tuple[int, int]]) -> bool:
    """Whether a frame of this (width, height) is the viewer's full-resolution one ("Max res", FULL_RES, on its long
    side), which it renders once the camera has stopped and its lower-resolution frames are sent."""
    return resolution is not None and max(resolution) >= FULL_RES


# --- what the render area should show ------------------------------------------------------------------------------


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two images, or of an image and a colour, in 0-255 levels."""
    return float(np.abs(a - b).mean())


def downsample(image: np.ndarray, size: Tuple[int, int] = (16, 12)) -> np.ndarray:
    """Box-filtered ``size`` (w, h) copy of a [H, W, 3] image in [0, 255]."""
    pil = Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8))
    return np.asarray(pil.resize(size, Image.BOX), dtype=np.float64)


def start_camera(width: int, height: int):
    """The nerfstudio camera of a fresh viewer tab (START_POSITION) for a ``width`` x ``height`` frame."""
    from nerfstudio.cameras.cameras import CameraType
    from nerfstudio.viewer.utils import CameraState, get_camera

    position = np.array(START_POSITION)
    back = position / np.linalg.norm(position)  # the camera looks down its -z axis, at the origin
    right = np.cross(np.array([0.0, 0.0, 1.0]), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = torch.tensor(np.stack([right, up, back, position], axis=1), dtype=torch.float32)
    state = CameraState(
        fov=math.radians(START_FOV_DEG), aspect=width / height, c2w=c2w, camera_type=CameraType.PERSPECTIVE
    )
    return get_camera(state, height, width)


def camera_view(camera_to_world: torch.Tensor, vertical_fov: float):
    """``(width, height) -> camera`` of a frame the viewer renders when its camera sits at ``camera_to_world`` with
    ``vertical_fov`` (radians): the viewer keeps the vertical field of view and takes the canvas's aspect."""
    from nerfstudio.cameras.cameras import CameraType
    from nerfstudio.viewer.utils import CameraState, get_camera

    def camera(width: int, height: int):
        state = CameraState(
            fov=vertical_fov, aspect=width / height, c2w=camera_to_world[:3].float(), camera_type=CameraType.PERSPECTIVE
        )
        return get_camera(state, height, width)

    return camera


def viewer_colours(image: torch.Tensor) -> np.ndarray:
    """A model output coloured as the viewer colours it by default (RGB as is, one channel as normalized turbo)."""
    from nerfstudio.utils.colormaps import ColormapOptions, apply_colormap

    return apply_colormap(image, ColormapOptions(normalize=image.shape[-1] == 1)).cpu().numpy() * 255.0


class ExpectedFrames:
    """What the render area should show for a frame of ``model``: its render from the start camera (``camera``:
    ``(width, height) -> Cameras``; default: a fresh viewer tab's) at the frame's resolution, coloured like the viewer
    colours it, sent as the viewer sends it (PNG or JPEG at one of JPEG_QUALITIES) and stretched over the canvas by
    the browser."""

    def __init__(self, model, canvas_size: Tuple[int, int], camera: Callable = start_camera):
        self.model = model
        self.canvas_size = canvas_size
        self.camera = camera
        self._outputs: Dict[Tuple[int, int], Dict[str, torch.Tensor]] = {}

    def outputs(self, resolution: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        if resolution not in self._outputs:
            with torch.no_grad():
                camera = self.camera(*resolution).to(self.model.device)
                self._outputs[resolution] = self.model.get_outputs_for_camera(camera)
        return self._outputs[resolution]

    def candidates(self, resolution: Tuple[int, int], name: str) -> List[np.ndarray]:
        """The render area, box-filtered, for each way the viewer may have sent the frame."""
        image = Image.fromarray(viewer_colours(self.outputs(resolution)[name]).round().astype(np.uint8))
        sent = [image]
        for quality in JPEG_QUALITIES:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality)
            sent.append(Image.open(buffer).convert("RGB"))
        width, height = self.canvas_size
        dx, dy = round(MARGIN * width), round(MARGIN * height)
        return [
            downsample(np.asarray(s.resize(self.canvas_size, Image.BILINEAR), dtype=np.float64)[dy:-dy, dx:-dx])
            for s in sent
        ]

    def difference(self, area: np.ndarray, resolution: Optional[Tuple[int, int]], name: str) -> float:
        """How far the render area is from the model's ``name`` output for that frame (inf without a frame)."""
        if resolution is None:
            return math.inf
        seen = downsample(area)
        return min(difference(seen, c) for c in self.candidates(resolution, name))
