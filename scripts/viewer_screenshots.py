"""Screenshots of ns-viewer showing nerf-qat in headless Chromium: a trained run and its int8 export.

Trains the tests' tiny model on the tests' gradient scene for longer than the tests do (so the render has some
structure), exports it with ns-export-int8, opens ns-viewer on each in headless Chromium (on 127.0.0.1 only) and
saves the page once the viewer shows its full-resolution frame from the start camera:

    python scripts/viewer_screenshots.py --output docs    # docs/viewer-trained.png, docs/viewer-int8.png

Needs chromium and chromedriver (apt-get install chromium chromium-driver); about 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tyro

from nerfqat_plugin.tools.browser import FULL_RES, chromium, missing_browser, viewer_server
from nerfqat_plugin.tools.runs import PRESETS, find_config, ns, train_flags
from nerfqat_plugin.tools.scenes import write_blender_scene


@dataclass
class ViewerScreenshots:
    """Save docs screenshots of the viewer."""

    output: Path = Path("docs")
    """Folder for viewer-trained.png and viewer-int8.png."""
    steps: int = 400
    """Training steps of the tiny model."""
    timeout: float = 600.0
    """Seconds to wait for each full-resolution frame."""
    run: Optional[Path] = None
    """config.yml of an existing trained run to show (e.g. the demo's) instead of training the tiny model."""

    def main(self) -> None:
        if missing_browser():
            sys.exit(missing_browser())
        self.output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="viewer-screenshots-") as tmp:
            work = Path(tmp)
            if self.run is not None:
                config = self.run.resolve()
            else:
                scene = write_blender_scene(work / "scene", size=32, views=4)
                print(f"training {self.steps} steps", flush=True)
                flags = train_flags("cpu", work / "outputs", "tiny", self.steps, PRESETS["tiny"])
                ns("ns-train", *flags, "blender-data", "--data", scene, cwd=work)
                config = find_config(work / "outputs", "tiny", "nerf-qat")
            ns("ns-export-int8", "--load-config", config, "--output-dir", work / "int8", cwd=work)
            for name, cfg in (("trained", config), ("int8", work / "int8" / "config.yml")):
                start = time.monotonic()
                with viewer_server(cfg, work / f"viewer-{name}.log") as server, chromium(work / name) as page:
                    page.open(server.url)
                    shot, resolution = page.wait_for(
                        lambda area, res: res is not None and max(res) == FULL_RES, self.timeout, "the full frame"
                    )
                    shot.save(self.output / f"viewer-{name}.png")
                    problems = server.problems()
                if problems:
                    sys.exit(f"ns-viewer logged errors:\n{server.log_text()}")
                print(f"viewer-{name}.png: frame {resolution} after {time.monotonic() - start:.0f} s", flush=True)


if __name__ == "__main__":
    tyro.cli(ViewerScreenshots).main()
