"""LPIPS that never downloads: built on first use, only from weights already in the torch hub cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

MIN_SIDE = 32
"""AlexNet LPIPS fails on images with a side shorter than this."""


def alexnet_weights_path() -> Path:
    """Where torchvision keeps the ImageNet AlexNet weights that LPIPS needs."""
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


class OfflineLPIPS:
    """Callable ``(pred, target) -> lpips or None``; images ``[1, 3, H, W]`` in [0, 1].

    A plain object, not an ``nn.Module``: the AlexNet backbone never enters the model's state dict or a
    checkpoint. When the weights are not cached (or the image is too small) it says so once and returns None.
    """

    def __init__(self) -> None:
        self._metric = None
        self._unavailable: Optional[str] = None
        self._warned = False

    def _build(self):
        path = alexnet_weights_path()
        if not path.exists():
            self._unavailable = f"LPIPS not computed: AlexNet weights not in the torch hub cache ({path})"
            return None
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)

    def __call__(self, pred: Tensor, target: Tensor) -> Optional[float]:
        if min(pred.shape[-2:]) < MIN_SIDE:
            return self._skip(f"LPIPS not computed: image {tuple(pred.shape[-2:])} smaller than {MIN_SIDE} px")
        if self._metric is None and self._unavailable is None:
            self._metric = self._build()
        if self._metric is None:
            return self._skip(self._unavailable or "LPIPS unavailable")
        self._metric = self._metric.to(pred.device)
        return float(self._metric(pred.clamp(0, 1), target.clamp(0, 1)))

    def _skip(self, reason: str) -> None:
        if not self._warned:
            CONSOLE.print(f"[yellow]{reason}")
            self._warned = True
        return None
