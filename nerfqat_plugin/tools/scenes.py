"""Tiny scenes the tests and scripts write themselves (no downloaded data): Blender and LLFF formats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image


def _look_at(position: np.ndarray) -> np.ndarray:
    """camera-to-world (OpenGL convention: camera looks down -z) looking at the origin."""
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, position
    return c2w


def write_blender_scene(root: Path, size: int = 16, views: int = 6) -> Path:
    """A Blender-format scene: ``views`` cameras on a circle around a colored gradient, ``size`` px images."""
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    for split in ("train", "val", "test"):
        (root / split).mkdir(exist_ok=True)
        frames = []
        for i in range(views):
            angle = 2 * math.pi * i / views + (0.3 if split != "train" else 0.0)
            pos = np.array([4.0 * math.cos(angle), 4.0 * math.sin(angle), 1.0])
            rgb = np.stack([xx, yy, 0.5 + 0.5 * math.cos(angle) * np.ones_like(xx)], axis=-1)
            rgba = np.concatenate([rgb, np.ones_like(xx)[..., None]], axis=-1)
            Image.fromarray((rgba * 255).astype(np.uint8)).save(root / split / f"r_{i}.png")
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": _look_at(pos).tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    return root


def write_llff_scene(
    root: Path,
    num_images: int = 6,
    width: int = 16,
    height: int = 12,
    factor: int = 4,
    focal: float = 40.0,
    bounds: tuple = (2.0, 10.0),
) -> Path:
    """An LLFF-format scene: cameras on a small grid looking down -z, ``images_<factor>/`` of ``width x height``.

    ``poses_bounds.npy`` holds the full-resolution size (factor x larger) and focal, LLFF axes [down, right, back],
    and image names differ from any pose ordering key but sort in pose order (``frame_00.png``, ...).
    """
    root.mkdir(parents=True, exist_ok=True)
    folder = root / ("images" if factor == 1 else f"images_{factor}")
    folder.mkdir(exist_ok=True)
    rows = []
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(num_images):
        center = np.array([0.2 * (i % 3) - 0.2, 0.1 * (i // 3), 0.0])
        # identity camera orientation in OpenGL axes (right = x, up = y, back = z) written in LLFF columns
        down, right, back = np.array([0.0, -1.0, 0.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
        hwf = np.array([height * factor, width * factor, focal * factor])
        pose = np.stack([down, right, back, center, hwf], axis=1)  # 3 x 5
        rows.append(np.concatenate([pose.reshape(-1), np.asarray(bounds, dtype=float)]))
        rgb = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), np.full(xx.shape, i / num_images)], -1)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"frame_{i:02d}.png")
    np.save(root / "poses_bounds.npy", np.stack(rows))
    return root
