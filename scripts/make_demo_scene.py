"""Write a small forward-facing demo scene in LLFF format (poses_bounds.npy + images/), ray-traced here.

The scene: a textured back wall, a checkered floor, and three textured spheres at different depths, seen by
``--views`` cameras on a small grid facing -z (like a hand-held LLFF capture). Deterministic: the same
arguments give the same bytes.

    python scripts/make_demo_scene.py --output data/demo --width 128 --height 96 --views 20
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from PIL import Image

# (center, radius, base colour, stripe colour)
SPHERES = [
    (np.array([-0.9, -0.2, -4.0]), 0.55, np.array([0.9, 0.25, 0.2]), np.array([1.0, 0.85, 0.3])),
    (np.array([0.5, 0.35, -5.5]), 0.8, np.array([0.2, 0.45, 0.9]), np.array([0.9, 0.95, 1.0])),
    (np.array([1.3, -0.55, -3.2]), 0.35, np.array([0.25, 0.8, 0.35]), np.array([0.1, 0.3, 0.1])),
]
WALL_Z = -8.0
FLOOR_Y = -1.0
LIGHT = np.array([0.4, 0.8, 0.45]) / np.linalg.norm([0.4, 0.8, 0.45])


def _shade_wall(p: np.ndarray) -> np.ndarray:
    u, v = p[..., 0], p[..., 1]
    r = 0.55 + 0.35 * np.sin(1.3 * u) * np.cos(0.9 * v)
    g = 0.5 + 0.3 * np.cos(1.1 * u + 0.7 * v)
    b = 0.6 + 0.3 * np.sin(0.8 * v - 0.5 * u)
    rings = 0.5 + 0.5 * np.sign(np.sin(2.5 * np.hypot(u - 0.3, v - 0.8)))
    return np.stack([r, g, b], -1) * (0.75 + 0.25 * rings[..., None])


def _shade_floor(p: np.ndarray) -> np.ndarray:
    check = (np.floor(p[..., 0] * 1.5) + np.floor(p[..., 2] * 1.5)) % 2
    return np.where(check[..., None] > 0, [0.85, 0.82, 0.75], [0.3, 0.28, 0.35])


def render(origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour and hit depth (distance along the ray) for rays ``dirs [H, W, 3]`` from ``origin``."""
    shape = dirs.shape[:-1]
    t_best = np.full(shape, np.inf)
    color = np.zeros(shape + (3,))
    # back wall: z = WALL_Z
    t = (WALL_Z - origin[2]) / dirs[..., 2]
    hit = t > 0
    t_best = np.where(hit, t, t_best)
    color = np.where(hit[..., None], _shade_wall(origin + t[..., None] * dirs), color)
    # floor: y = FLOOR_Y
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (FLOOR_Y - origin[1]) / dirs[..., 1]
    hit = (t > 0) & (t < t_best)
    t_best = np.where(hit, t, t_best)
    color = np.where(hit[..., None], _shade_floor(origin + t[..., None] * dirs), color)
    for center, radius, base, stripe in SPHERES:
        oc = origin - center
        b = np.sum(dirs * oc, -1)
        disc = b * b - (np.sum(oc * oc) - radius * radius)
        t = -b - np.sqrt(np.maximum(disc, 0))
        hit = (disc > 0) & (t > 0) & (t < t_best)
        p = origin + t[..., None] * dirs
        n = (p - center) / radius
        stripes = 0.5 + 0.5 * np.sign(np.sin(9.0 * n[..., 1] + 4.0 * n[..., 0]))
        albedo = base * (1 - stripes[..., None]) + stripe * stripes[..., None]
        lit = 0.35 + 0.65 * np.clip(np.sum(n * LIGHT, -1), 0, 1)
        t_best = np.where(hit, t, t_best)
        color = np.where(hit[..., None], albedo * lit[..., None], color)
    return np.clip(color, 0, 1), t_best


@dataclass
class MakeDemoScene:
    """Ray-trace the demo scene and write it as an LLFF scene folder."""

    output: Path = Path("data/demo")
    """Folder to write: poses_bounds.npy and images/."""
    width: int = 128
    """Image width in pixels."""
    height: int = 96
    """Image height in pixels."""
    views: int = 20
    """Number of camera views (every 8th is held out for testing by llff-data)."""
    fov_degrees: float = 55.0
    """Horizontal field of view."""

    def main(self) -> Path:
        images = self.output / "images"
        images.mkdir(parents=True, exist_ok=True)
        focal = 0.5 * self.width / math.tan(math.radians(self.fov_degrees) / 2)
        cols = math.ceil(math.sqrt(self.views * 4 / 3))
        rows = []
        for i in range(self.views):
            gx, gy = i % cols, i // cols
            center = np.array([0.5 * (gx / max(cols - 1, 1) - 0.5), 0.35 * (gy / max(cols - 1, 1) - 0.4), 0.0])
            center[2] = 0.1 * math.sin(1.7 * i)
            j, i_row = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
            dirs = np.stack([(j - self.width / 2) / focal, -(i_row - self.height / 2) / focal, -np.ones_like(j)], -1)
            dirs_unit = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
            rgb, t = render(center, dirs_unit)
            depth_axis = t * -dirs_unit[..., 2]
            Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(images / f"view_{i:03d}.png")
            # LLFF pose columns: [down, right, back, center, (H, W, focal)]
            pose = np.zeros((3, 5))
            pose[:, 0] = [0, -1, 0]
            pose[:, 1] = [1, 0, 0]
            pose[:, 2] = [0, 0, 1]
            pose[:, 3] = center
            pose[:, 4] = [self.height, self.width, focal]
            near, far = np.percentile(depth_axis, 0.5), np.percentile(depth_axis, 99.5)
            rows.append(np.concatenate([pose.reshape(-1), [near, far]]))
        np.save(self.output / "poses_bounds.npy", np.stack(rows).astype(np.float64))
        print(f"wrote {self.views} views ({self.width}x{self.height}) to {self.output}")
        return self.output


if __name__ == "__main__":
    tyro.cli(MakeDemoScene).main()
