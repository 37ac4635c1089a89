"""nerf-qat's datamanager: nerfstudio's ``VanillaDataManager`` plus what a shareable model and several GPUs need.

- Images may be absent where the scene says so (an export's camera record, ``images_optional``): views and renders
  need only the cameras, so a missing image reads as flat grey (the viewer's camera thumbnails), and evaluation,
  which needs the real ones, stops before rendering with one line naming the folder and how to point at it.
- For forward-facing scenes (``ndc`` in the dataparser's metadata) the viewer opens on a training camera, the one
  nearest the mean camera position, instead of nerfstudio's default view from outside the captured range.
- With several processes it has the ``train_sampler`` nerfstudio's pipeline expects (1.1.5 asserts it at step 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import numpy.typing as npt
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.viewer.viewer_elements import ViewerControl
from torch.utils.data.distributed import DistributedSampler

from nerfqat_plugin.ndc import ndc_space

PLACEHOLDER_LEVEL = 128
"""Grey level of a missing image."""


class SceneImages(InputDataset):
    """``InputDataset`` whose images may be missing when the dataparser marks them optional (an export)."""

    def missing_images(self) -> List[Path]:
        if not self.metadata.get("images_optional"):
            return []
        return [Path(p) for p in self._dataparser_outputs.image_filenames if not Path(p).is_file()]

    def get_numpy_image(self, image_idx: int) -> npt.NDArray[np.uint8]:
        path = Path(self._dataparser_outputs.image_filenames[image_idx])
        if self.metadata.get("images_optional") and not path.is_file():
            camera = self.cameras[image_idx]
            return np.full((int(camera.height), int(camera.width), 3), PLACEHOLDER_LEVEL, dtype=np.uint8)
        return super().get_numpy_image(image_idx)


class _NeedsImages:
    """Stands in for the evaluation dataloader when ground-truth images are missing: fails on first use."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __iter__(self) -> Iterator:
        raise FileNotFoundError(self.message)

    def __len__(self) -> int:
        raise FileNotFoundError(self.message)


class StartCamera(ViewerControl):
    """Puts each new viewer client's camera at a training camera (nerfstudio scans the pipeline for
    ``ViewerControl`` objects and hands them the viewer)."""

    def __init__(self, camera_to_world: torch.Tensor, vertical_fov: float, index: int) -> None:
        self.camera_to_world = camera_to_world.detach().cpu().double().numpy()
        self.vertical_fov = vertical_fov
        self.index = index

    @classmethod
    def nearest_to_mean(cls, cameras: Cameras) -> "StartCamera":
        """The camera nearest the mean camera position, with its vertical field of view."""
        centers = cameras.camera_to_worlds[:, :3, 3]
        index = int(torch.linalg.norm(centers - centers.mean(0), dim=-1).argmin())
        fov = 2.0 * float(torch.atan(cameras.height[index].float() / (2.0 * cameras.fy[index])).squeeze())
        return cls(cameras.camera_to_worlds[index], fov, index)

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        self.viser_server.on_client_connect(self._on_connect)

    def _on_connect(self, client) -> None:
        origin: list = []  # the client's camera before it was placed, while reports of it may still arrive

        @client.camera.on_update
        def _(camera) -> None:
            if not origin:  # the first report of the client's camera: it can be moved from now on
                origin.append((camera.position.copy(), camera.wxyz.copy()))
            elif origin[0] is None or not self._same_pose(camera, *origin[0]):
                origin[0] = None  # the client has moved on (it shows the placed camera, or its user moved it)
                return
            # first report, or one the client sent before it applied the placement: that would put the camera back
            self.place(camera)

    @staticmethod
    def _same_pose(camera, position: np.ndarray, wxyz: np.ndarray) -> bool:
        return bool(np.allclose(camera.position, position, atol=1e-6) and np.allclose(camera.wxyz, wxyz, atol=1e-6))

    def place(self, camera) -> None:
        """Move a viser camera handle to the training camera (viser: +z looks forward, -y is up), and hide that
        camera's frustum, whose image would otherwise cover the view."""
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        frustum = getattr(self.viewer, "camera_handles", {}).get(self.index)
        if frustum is not None:
            frustum.visible = False
        c2w = self.camera_to_world
        position = c2w[:3, 3] * VISER_NERFSTUDIO_SCALE_RATIO
        with camera.client.atomic():
            camera.fov = self.vertical_fov
            camera.position = position
            camera.look_at = position - c2w[:3, 2] * VISER_NERFSTUDIO_SCALE_RATIO  # one unit along the view axis
            camera.up_direction = c2w[:3, 1]
        # render from the placed camera now: the client need not report a camera the server set
        machine = getattr(self.viewer, "render_statemachines", {}).get(camera.client.client_id)
        if machine is not None and getattr(self.viewer, "ready", False):
            from nerfstudio.viewer.render_state_machine import RenderAction

            machine.action(RenderAction("move", self.viewer.get_camera_state(camera.client)))


class NeRFQATDataManager(VanillaDataManager[SceneImages]):
    """``VanillaDataManager`` with optional images and the viewer's start camera (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.world_size > 1:
            # nerfstudio's pipeline calls train_sampler.set_epoch(step) with several processes but leaves this
            # datamanager's sampler unset; pixels are drawn at random per process (seeded per rank) all the same
            self.train_sampler = DistributedSampler(self.train_dataset)
        self.viewer_start: Optional[StartCamera] = None
        if self.train_dataset is not None and ndc_space("auto", self.train_dataset.metadata) is not None:
            self.viewer_start = StartCamera.nearest_to_mean(self.train_dataset.cameras)

    def setup_eval(self) -> None:
        super().setup_eval()
        missing = self.eval_dataset.missing_images()
        if missing:
            folder = missing[0].parent
            self.fixed_indices_eval_dataloader = _NeedsImages(  # type: ignore[assignment]
                f"evaluation needs the ground-truth images of the held-out views, and {folder} is not there "
                f"({len(missing)} of {len(self.eval_dataset)} missing): put the scene back there, or set `data:` "
                "under `dataparser:` in this export's config.yml to the scene folder"
            )
