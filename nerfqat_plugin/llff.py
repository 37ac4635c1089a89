"""LLFF dataparser: ``poses_bounds.npy`` plus ``images_<factor>/`` (forward-facing captures such as fern).

Only imports nerfstudio's camera and dataparser modules: this file is loaded during plugin discovery, when
importing datamanagers or pipelines would be circular.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple, Type

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
POSES_FILE = "poses_bounds.npy"


# --- pose math (numpy, no nerfstudio) ------------------------------------------------------------------------------


def llff_to_opengl(poses: np.ndarray) -> np.ndarray:
    """LLFF camera-to-world [down, right, back, center] (N x 3 x 4) to OpenGL [right, up, back, center]."""
    down, right, back, center = (poses[..., i : i + 1] for i in range(4))
    return np.concatenate([right, -down, back, center], axis=-1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """A 3 x 4 camera-to-world at the mean camera center, looking along the mean viewing axis (OpenGL axes)."""
    center = c2w[:, :, 3].mean(axis=0)
    back = _unit(c2w[:, :, 2].sum(axis=0))
    right = _unit(np.cross(c2w[:, :, 1].sum(axis=0), back))
    up = np.cross(back, right)
    return np.stack([right, up, back, center], axis=1)


def invert_pose(c2w: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 3 x 4 transform, as 3 x 4."""
    rot_t = c2w[:, :3].T
    return np.concatenate([rot_t, -rot_t @ c2w[:, 3:]], axis=1)


def apply_transform(transform: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """``transform`` (3 x 4) composed before each camera-to-world (N x 3 x 4)."""
    rot, trans = transform[:, :3], transform[:, 3]
    return np.concatenate([rot @ c2w[:, :, :3], (c2w[:, :, 3] @ rot.T + trans)[..., None]], axis=-1)


# --- files -----------------------------------------------------------------------------------------------------------


def load_poses_bounds(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(N x 3 x 5 poses with [H, W, focal] in the last column, N x 2 near/far depth bounds) from poses_bounds.npy."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: an LLFF scene needs poses_bounds.npy (from LLFF's imgs2poses.py)")
    try:
        array = np.load(path)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable .npy file ({err})") from err
    if array.ndim != 2 or array.shape[1] != 17 or array.shape[0] == 0:
        raise ValueError(f"{path} has shape {tuple(array.shape)}, expected (N, 17): a 3x5 pose and 2 bounds per image")
    poses = array[:, :15].reshape(-1, 3, 5).astype(np.float64)
    bounds = array[:, 15:].astype(np.float64)
    if not np.isfinite(array).all() or (bounds <= 0).any():
        raise ValueError(f"{path} has non-finite values or non-positive depth bounds")
    return poses, bounds


def image_folder(root: Path, factor: int) -> Path:
    """``images/`` for factor 1, else ``images_<factor>/``; a clear error naming the folders that do exist."""
    folder = root / ("images" if factor == 1 else f"images_{factor}")
    if folder.is_dir():
        return folder
    existing = sorted(p.name for p in root.glob("images*") if p.is_dir())
    hint = (
        f"existing: {', '.join(existing)}; pick one with --downscale-factor or make {folder.name} with a resize"
        if existing
        else "no images* folder exists"
    )
    raise FileNotFoundError(f"{folder} not found for downscale factor {factor} ({hint})")


def list_images(folder: Path) -> List[Path]:
    """Image files in sorted name order (the order of the rows of poses_bounds.npy)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the image header; a clear error naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path} ({type(err).__name__}); replace or delete it") from err


# --- dataparser ------------------------------------------------------------------------------------------------------


@dataclass
class LLFFDataParserConfig(DataParserConfig):
    """LLFF forward-facing scene: poses_bounds.npy and images_<factor>/ (NeRF's real-world data)."""

    _target: Type = field(default_factory=lambda: LLFF)
    """Class this config builds."""
    data: Path = Path("data/nerf_llff_data/fern")
    """Scene folder holding poses_bounds.npy and images_<downscale-factor>/ (images/ for factor 1)."""
    downscale_factor: int = 8
    """Read images from images_<factor>/; intrinsics are scaled to the size found on disk."""
    eval_interval: int = 8
    """Image i (sorted name order) is a test image when i % eval_interval == 0 (LLFF's llffhold); 0: no holdout."""
    ndc: bool = True
    """Forward-facing scene: tell the model to warp rays to NDC (nerf-qat's --pipeline.model.ndc auto)."""
    recenter: bool = True
    """Move the world origin to the average camera and align -z with the average viewing direction."""
    bound_scale: float = 0.75
    """Rescale the scene so that the nearest depth bound sits at 1/bound_scale (NeRF: 0.75, so 1.33)."""
    near_factor: float = 0.9
    """Without NDC, rays start at near_factor * (nearest rescaled bound)."""
    far_factor: float = 1.0
    """Without NDC, rays end at far_factor * (farthest rescaled bound)."""


@dataclass
class LLFF(DataParser):
    """Reads an LLFF scene into OpenGL cameras (x right, y up, looking down -z), recentred and rescaled."""

    config: LLFFDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        cfg = self.config
        if cfg.downscale_factor < 1 or cfg.eval_interval < 0 or not 0 < cfg.bound_scale:
            raise ValueError(
                f"need downscale_factor >= 1, eval_interval >= 0 and bound_scale > 0, got "
                f"{cfg.downscale_factor}, {cfg.eval_interval}, {cfg.bound_scale}"
            )
        poses_path = cfg.data / POSES_FILE
        poses, bounds = load_poses_bounds(poses_path)
        folder = image_folder(cfg.data, cfg.downscale_factor)
        files = list_images(folder)
        if len(files) != len(poses):
            raise ValueError(
                f"{poses_path} has {len(poses)} poses but {folder} has {len(files)} images; they pair up in sorted "
                "name order, so the counts must match"
            )
        width, height = self._check_sizes(files)

        full_h, full_w, full_focal = poses[:, :, 4].T
        ratio_x, ratio_y = width / full_w, height / full_h
        if (np.abs(ratio_x - ratio_y) > 0.02 * ratio_x).any():
            raise ValueError(
                f"images in {folder} are {width}x{height} but {poses_path} says "
                f"{int(full_w[0])}x{int(full_h[0])} at full size: the aspect ratios differ"
            )
        fx, fy = full_focal * ratio_x, full_focal * ratio_y

        c2w = llff_to_opengl(poses[:, :, :4])
        transform = invert_pose(average_pose(c2w)) if cfg.recenter else np.eye(4)[:3]
        c2w = apply_transform(transform, c2w)
        scale = 1.0 / (bounds.min() * cfg.bound_scale)
        c2w[:, :, 3] *= scale
        bounds = bounds * scale

        indices = self._split_indices(len(files), split)
        if not indices:
            raise ValueError(f"no {split} images: {len(files)} images with eval_interval {cfg.eval_interval}")
        metadata: Dict[str, object] = {
            "near_plane": float(bounds.min() * cfg.near_factor),
            "far_plane": float(bounds.max() * cfg.far_factor),
            "ndc": cfg.ndc,
            # the NDC space is defined by the first camera's intrinsics at the resolution read here
            "ndc_params": {
                "focal_x": float(fx[0]),
                "focal_y": float(fy[0]),
                "width": float(width),
                "height": float(height),
                "near_plane": 1.0,
            },
        }
        cameras = Cameras(
            camera_to_worlds=torch.from_numpy(c2w[indices]).float(),
            fx=torch.from_numpy(fx[indices, None]).float(),
            fy=torch.from_numpy(fy[indices, None]).float(),
            cx=width / 2.0,
            cy=height / 2.0,
            width=width,
            height=height,
            camera_type=CameraType.PERSPECTIVE,
        )
        return DataparserOutputs(
            image_filenames=[files[i] for i in indices],
            cameras=cameras,
            scene_box=self._scene_box(c2w, float(metadata["far_plane"])),  # type: ignore[arg-type]
            metadata=metadata,
            dataparser_transform=torch.from_numpy(transform).float(),
            dataparser_scale=float(scale),
        )

    @staticmethod
    def _check_sizes(files: List[Path]) -> Tuple[int, int]:
        sizes = {path: image_size(path) for path in files}
        first = sizes[files[0]]
        for path, size in sizes.items():
            if size != first:
                raise ValueError(f"image {path} is {size[0]}x{size[1]}, but {files[0].name} is {first[0]}x{first[1]}")
        return first

    def _split_indices(self, count: int, split: str) -> List[int]:
        interval = self.config.eval_interval
        if interval == 0:
            return list(range(count))
        test = [i for i in range(count) if i % interval == 0]
        if split == "train":
            return [i for i in range(count) if i % interval != 0]
        if split in ("val", "test"):
            return test
        raise ValueError(f"unknown split {split!r}: expected train, val or test")

    def _scene_box(self, c2w: np.ndarray, far: float) -> SceneBox:
        if self.config.ndc:
            # the model works in NDC, where everything the training cameras see lies within [-1, 1]^3
            return SceneBox(aabb=torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]))
        centers = c2w[:, :, 3]
        lower, upper = centers.min(axis=0) - far, centers.max(axis=0) + far
        return SceneBox(aabb=torch.from_numpy(np.stack([lower, upper])).float())


llff_data = DataParserSpecification(
    config=LLFFDataParserConfig(),
    description="LLFF forward-facing scenes (poses_bounds.npy + images_N/), recentred, rescaled, NDC-ready.",
)
