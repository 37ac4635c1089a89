"""Tiny scenes written by the tests themselves (no downloaded data)."""

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
