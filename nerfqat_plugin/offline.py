"""Run nerfstudio's own methods offline: vanilla-nerf and nerfacto build torchvision's LPIPS (a download) when they
are created.

``patch_lpips()`` swaps torchmetrics' LPIPS class for one that computes LPIPS only from weights already in the torch
hub cache and returns NaN otherwise (said once), so ``vanilla-nerf`` and ``nerfacto`` train and evaluate without a
network; ``offline_lpips()`` does it for a while (nerfacto-qat builds its nerfacto under it). Nothing in nerfstudio
is edited: the patch lives in the running process only.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
from types import ModuleType
from typing import Iterator, List, Optional

import torch
from torch import Tensor, nn

from nerfqat_plugin.lpips import OfflineLPIPS


class OfflineLPIPSModule(nn.Module):
    """Stand-in for ``LearnedPerceptualImagePatchSimilarity``: LPIPS when computable, else NaN."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        self._lpips = OfflineLPIPS()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        value = self._lpips(pred, target)
        return torch.tensor(math.nan if value is None else value)


LPIPS_NAME = "LearnedPerceptualImagePatchSimilarity"


def _lpips_modules() -> List[ModuleType]:
    """Where torchmetrics binds its LPIPS class: nerfstudio's models import it from either."""
    import torchmetrics.image
    import torchmetrics.image.lpip

    return [torchmetrics.image.lpip, torchmetrics.image]


def patch_lpips() -> None:
    """Make ``torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity`` the offline stand-in."""
    for module in _lpips_modules():
        setattr(module, LPIPS_NAME, OfflineLPIPSModule)


@contextlib.contextmanager
def offline_lpips() -> Iterator[None]:
    """``patch_lpips`` while the block runs, then torchmetrics' own class again."""
    originals = [(module, getattr(module, LPIPS_NAME)) for module in _lpips_modules()]
    patch_lpips()
    try:
        yield
    finally:
        for module, original in originals:
            setattr(module, LPIPS_NAME, original)


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m nerfqat_plugin.offline ns-train|ns-eval ARGS``: the nerfstudio command with ``patch_lpips``."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"ns-train": "nerfstudio.scripts.train", "ns-eval": "nerfstudio.scripts.eval"}
    if not args or args[0] not in commands:
        sys.exit(f"usage: python -m nerfqat_plugin.offline {{{'|'.join(commands)}}} ARGS...")
    patch_lpips()
    module = importlib.import_module(commands[args[0]])
    sys.argv = args
    module.entrypoint()


if __name__ == "__main__":
    main()
