"""The seed paper's numbers that the reports and figures quote beside ours (fern, 1/8 resolution, 50k+ GPU steps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table 2 measured on fern."""

    name: str
    psnr: float
    ssim: float
    lpips: float
    bytes: float
    """Model size."""


TABLE1: List[Tuple[str, float]] = [("fused", 30.79), ("unfused", 24.59)]
"""Table 1: PSNR of w8a8 QAT with Linear+ReLU fused and unfused."""
TABLE2_FERN = [PaperRow("NeRF", 31.49, 0.899, 0.050, 4.78e6), PaperRow("NeRF-QAT", 30.56, 0.819, 0.114, 1.33e6)]
"""Table 2's rows measured on fern."""
TABLE2_SIZES: List[Tuple[str, float]] = [("Instant-NGP", 64.1e6), ("TensoRF", 71.8e6), ("Plenoxels", 778e6)]
"""Table 2's other rows: (name, model bytes); their PSNR there are NeRF-Synthetic averages, not fern's."""
