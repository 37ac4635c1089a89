"""Write a small object-in-a-box scene in Blender format (transforms_*.json + RGBA PNGs), ray-traced here.

Three striped spheres near the origin, inside the Blender scene box [-1.5, 1.5]^3, on a transparent background,
seen from cameras on a sphere of radius 4 looking at the origin (like NeRF-Synthetic's captures): most of the box
is empty space, which is what an occupancy grid skips. Deterministic: the same arguments give the same bytes.

    python scripts/make_object_scene.py --output data/object --size 64 --views 24
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from PIL import Image

# (center, radius, base colour, stripe colour)
SPHERES = [
    (np.array([-0.45, -0.25, 0.1]), 0.45, np.array([0.9, 0.25, 0.2]), np.array([1.0, 0.85, 0.3])),
    (np.array([0.4, 0.3, -0.15]), 0.55, np.array([0.2, 0.45, 0.9]), np.array([0.9, 0.95, 1.0])),
    (np.array([0.15, -0.45, 0.55]), 0.3, np.array([0.25, 0.8, 0.35]), np.array([0.1, 0.3, 0.1])),
]
LIGHT = np.array([0.4, 0.45, 0.8]) / np.linalg.norm([0.4, 0.45, 0.8])


def render(origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """RGBA of rays ``dirs [H, W, 3]`` from ``origin``: the nearest sphere's shaded colour, alpha 0 where none."""
    shape = dirs.shape[:-1]
    t_best = np.full(shape, np.inf)
    rgba = np.zeros(shape + (4,))
    for center, radius, base, stripe in SPHERES:
        oc = origin - center
        b = np.sum(dirs * oc, -1)
        disc = b * b - (np.sum(oc * oc) - radius * radius)
        t = -b - np.sqrt(np.maximum(disc, 0))
        hit = (disc > 0) & (t > 0) & (t < t_best)
        n = (origin + t[..., None] * dirs - center) / radius
        stripes = 0.5 + 0.5 * np.sign(np.sin(9.0 * n[..., 2] + 4.0 * n[..., 0]))
        albedo = base * (1 - stripes[..., None]) + stripe * stripes[..., None]
        lit = 0.35 + 0.65 * np.clip(np.sum(n * LIGHT, -1), 0, 1)
        t_best = np.where(hit, t, t_best)
        colour = np.concatenate([albedo * lit[..., None], np.ones(shape + (1,))], -1)
        rgba = np.where(hit[..., None], colour, rgba)
    return np.clip(rgba, 0, 1)


def look_at(position: np.ndarray) -> np.ndarray:
    """camera-to-world (OpenGL: the camera looks down -z, +y up) looking at the origin, +z the world's up."""
    back = position / np.linalg.norm(position)
    right = np.cross(np.array([0.0, 0.0, 1.0]), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, position
    return c2w


@dataclass
class MakeObjectScene:
    """Ray-trace the object scene and write it as a Blender scene folder (train, val and test splits)."""

    output: Path = Path("data/object")
    """Folder to write."""
    size: int = 64
    """Image width and height in pixels."""
    views: int = 24
    """Training views (val and test get a quarter as many each, at other angles)."""
    fov_degrees: float = 40.0
    """Horizontal field of view."""

    def main(self) -> Path:
        angle_x = math.radians(self.fov_degrees)
        focal = 0.5 * self.size / math.tan(angle_x / 2)
        counts = {"train": self.views, "val": max(self.views // 4, 1), "test": max(self.views // 4, 1)}
        for split, count in counts.items():
            (self.output / split).mkdir(parents=True, exist_ok=True)
            frames = []
            for i in range(count):
                golden = i + {"train": 0.0, "val": 0.37, "test": 0.71}[split]
                azimuth = 2.4 * golden
                elevation = math.asin(0.9 * (2 * ((golden * 0.618) % 1) - 1)) * 0.7
                position = 4.0 * np.array(
                    [
                        math.cos(elevation) * math.cos(azimuth),
                        math.cos(elevation) * math.sin(azimuth),
                        math.sin(elevation),
                    ]
                )
                c2w = look_at(position)
                j, row = np.meshgrid(np.arange(self.size) + 0.5, np.arange(self.size) + 0.5)
                cam = np.stack([(j - self.size / 2) / focal, -(row - self.size / 2) / focal, -np.ones_like(j)], -1)
                dirs = cam @ c2w[:3, :3].T
                dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
                rgba = render(position, dirs)
                Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA").save(self.output / split / f"r_{i}.png")
                frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
            text = json.dumps({"camera_angle_x": angle_x, "frames": frames}, indent=1)
            (self.output / f"transforms_{split}.json").write_text(text)
        print(f"wrote {counts} views ({self.size}x{self.size}) to {self.output}")
        return self.output


if __name__ == "__main__":
    tyro.cli(MakeObjectScene).main()
