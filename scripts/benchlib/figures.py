"""The figures of the benchmark reports, drawn from a result's rows (and, for renders, the runs they point to)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import torch

from benchlib import paper
from benchlib.variants import VIEW_VARIANTS


def pyplot():
    """matplotlib.pyplot drawing to files only (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def render_test_view(config: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ground truth, render) of the first held-out view, [H, W, 3] in [0, 1], on the CPU or GPU."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    camera, batch = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))
    with torch.no_grad():
        outputs = pipeline.model.get_outputs_for_camera(camera.to(pipeline.device))
    return batch["image"][..., :3].float().cpu(), outputs["rgb"].clamp(0, 1).float().cpu()


def view_figure(out: Path, result: Dict) -> None:
    """Ground truth and each of VIEW_VARIANTS (int8 exports for QAT) on the first held-out view."""
    plt = pyplot()
    rows = {r["variant"]: r for r in result["rows"] if "trained" in r}
    step = result["compared_step"]
    # QAT variants from their int8 exports, the others from their run at the compared step
    shown = [
        (
            n,
            Path(rows[n]["export"])
            if "export" in rows[n]
            else Path(rows[n]["run"]).with_name(f"config-step{step}.yml"),
        )
        for n in VIEW_VARIANTS
        if n in rows
    ]
    if not shown:
        return
    try:
        images, gt = [], None
        for name, config in shown:
            gt, image = render_test_view(config)
            psnr = rows[name]["int8" if "int8" in rows[name] else "trained"]["psnr"]
            images.append((f"{name}{' (int8)' if 'int8' in rows[name] else ''}: {psnr:.2f} dB", image))
        fig, axes = plt.subplots(1, len(images) + 1, figsize=(4 * (len(images) + 1), 3.6))
        for ax, (title, image) in zip(axes, [("ground truth", gt), *images], strict=True):
            ax.imshow(image.numpy())
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(f"fern, {result['preset']} preset, step {result['compared_step']}: first held-out view")
        fig.tight_layout()
        fig.savefig(out.parent / f"{out.name}_view.png", dpi=80)
        plt.close(fig)
    except Exception as err:  # a figure must not lose the measured numbers
        print(f"test-view figure failed: {err}", flush=True)


def frontier_figure(out: Path, result: Dict) -> None:
    """PSNR against model file size: the int8 exports by weight bits, fp32 weights, and the paper's rows (quoted)."""
    plt = pyplot()
    rows = [r for r in result["rows"] if "trained" in r]
    fused = sorted((r for r in rows if "int8" in r and "fused" in r["variant"] and "unfused" not in r["variant"]),
                   key=lambda r: r["export_file_bytes"])  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if fused:
        ax.plot([r["export_file_bytes"] / 1e6 for r in fused], [r["int8"]["psnr"] for r in fused], "o-",
                label="nerf-qat int8 file, fused (weight bits)")  # fmt: skip
        for r in fused:
            ax.annotate(r["variant"].split("-")[1], (r["export_file_bytes"] / 1e6, r["int8"]["psnr"]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))  # fmt: skip
    for r in rows:
        if "int8" in r and r not in fused:
            ax.scatter(r["export_file_bytes"] / 1e6, r["int8"]["psnr"], marker="x", label=f"{r['variant']} (int8)")
        elif not r["variant"].startswith("qat"):
            ax.scatter(r["fp32_weight_bytes"] / 1e6, r["trained"]["psnr"], marker="s", label=f"{r['variant']} (fp32)")
    for p in paper.TABLE2_FERN:
        ax.scatter(p.bytes / 1e6, p.psnr, marker="*", s=90, label=f"{p.name} (paper, quoted), 50k+ steps")
    ax.set_xscale("log")
    ax.set_xlabel("MLP weights (MB, log scale)")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.set_title(f"fern, {result['preset']} preset, step {result.get('compared_step')}: size vs quality")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out.parent / f"{out.name}_size_psnr.png", dpi=80)
    plt.close(fig)
