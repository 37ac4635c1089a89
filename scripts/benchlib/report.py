"""The Markdown reports of the benchmarks: the lines every report starts with, and the fern benchmark's tables
(the paper's Tables 1 and 2 beside ours, the size-quality frontier, and the checks)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from benchlib import paper
from nerfqat_plugin.tools.runs import machine_line

LOW_BIT_LIMIT_DB = 0.5
"""Largest PSNR loss against fp32 accepted for 3- and 2-bit weights."""


def commit() -> str:
    """The commit the benchmarks run at (short hash), or 'unknown' outside a git checkout."""
    repo = Path(__file__).resolve().parents[2]
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


def provenance(result: Mapping[str, object]) -> List[str]:
    """The command that measured a result and the machine it ran on, as report lines."""
    return [f"Command: `{result['command']}`  ", f"Machine: {machine_line(result['machine'])}  "]  # type: ignore[arg-type]


def _fmt(v: Optional[float], spec: str, missing: str = "n/a") -> str:
    """``v`` formatted, or ``missing`` where it was not measured."""
    return missing if v is None else format(v, spec)


def report(result: Dict[str, object], out: Path) -> str:
    """The fern benchmark's Markdown report of a result, with its figures beside ``out`` linked."""
    s = result["settings"]
    rows = {r["variant"]: r for r in result["rows"] if "trained" in r}  # type: ignore[union-attr]
    step = result["compared_step"]
    limit = f"{s['train_seconds']:.0f} s of training, " if s.get("train_seconds") else ""  # type: ignore[union-attr]
    together = "side by side" if s["parallel"] else "one after another"  # type: ignore[index]
    lines = [
        f"# fern benchmark, {result['preset']} preset",
        "",
        *provenance(result),
        f"Settings: fern images_{s['downscale_factor']}, up to {s['steps']} steps ({limit}checkpoint every "  # type: ignore[index]
        f"{s['save_every']}), {s['rays']} rays per batch, {s['coarse_samples']}+{s['fine_samples']} samples, "  # type: ignore[index]
        f"nerf-qat MLP {s['num_layers']}x{s['layer_width']} (skip {s['skip_layer']}, view {s['view_width']}), "  # type: ignore[index]
        f"vanilla-nerf its fixed 8x256, seed {s['seed']}, runs {together}; "  # type: ignore[index]
        f"held-out: every 8th image. Total wall time {result['wall_s'] / 60:.1f} min.  ",  # type: ignore[operator]
        f"**Compared at step {step}**: {result['compared_step_why']}."
        + (
            "  \nThe runs were trained by an earlier invocation with these settings (it stopped before evaluating) "
            "and evaluated by this one (`--evaluate-only`); train wall times from nerfstudio's event log."
            if result.get("evaluated_earlier_runs")
            else ""
        )
        + (
            f"  \nReused as an earlier invocation with these settings trained them (`--reuse-trained`): "
            f"{', '.join(result['reused_runs'])}; train wall times from that invocation."  # type: ignore[arg-type]
            if result.get("reused_runs")
            else ""
        ),
        "",
        "Our rows are measured by this script at the committed code; the paper's rows are quoted from the seed paper",
        "(fern, 1/8 resolution, 50k+ steps on a GPU), so compare shapes (differences between rows), not absolutes.",
        "",
        "## Table 1: fused vs unfused Linear+ReLU (w8a8)",
        "",
        "| variant | QAT from step | PSNR trained (fake-quant) | PSNR int8 export | int8 - trained |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("qat-w8a8-fused", "qat-w8a8-unfused", "qat-w8a8-fused-from0", "qat-w8a8-unfused-from0"):
        if name in rows and "int8" in rows[name]:
            r = rows[name]
            start = "0" if name.endswith("from0") else str(s.get("quant_start_step", "default"))  # type: ignore[union-attr]
            lines.append(
                f"| {name} (ours) | {start} | {r['trained']['psnr']:.3f} | {r['int8']['psnr']:.3f} | "
                f"{r['int8_minus_trained_psnr_db']:+.4f} |"
            )
    for name, psnr in paper.TABLE1:
        lines.append(f"| {name} (paper, quoted) | 0 (stock eager QAT) | | {psnr:.2f} | |")
    lines += _table1_answer(rows)
    lines += [
        "",
        "## Table 2: quality and size",
        "",
        "| model | PSNR | SSIM | LPIPS | MLP weights (bytes) | train samples/s | eval rays/s | last step saved "
        "| train wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        t = r["trained"]
        label = f"{name} (ours{', fake-quant' if name.startswith('qat') else ''})"
        last = r["steps_saved"][-1] if r.get("steps_saved") else None
        lines.append(
            f"| {label} | {t['psnr']:.3f} | {t['ssim']:.3f} | {_fmt(t['lpips'], '.3f', 'unavailable')} | "
            f"{r['fp32_weight_bytes']:,} (fp32) | {_fmt(r['train_samples_per_s'], ',.0f')} | "
            f"{_fmt(t['eval_rays_per_s'], ',.0f')} | {_fmt(last, 'd')} | {_fmt(r.get('train_wall_s'), '.0f')} |"
        )
        if "int8" in r:
            q = r["int8"]
            lines.append(
                f"| {name} (ours, int8 export) | {q['psnr']:.3f} | {q['ssim']:.3f} | "
                f"{_fmt(q['lpips'], '.3f', 'unavailable')} | {r['export_file_bytes']:,} (file) | | "
                f"{_fmt(q['eval_rays_per_s'], ',.0f')} | | |"
            )
    for p in paper.TABLE2_FERN:
        lines.append(
            f"| {p.name} (paper, quoted) | {p.psnr:.2f} | {p.ssim:.3f} | {p.lpips:.3f} | {p.bytes:,.0f} | | | | |"
        )
    failed = [r for r in result["rows"] if "error" in r]  # type: ignore[union-attr]
    for r in failed:
        lines += ["", f"**{r['variant']} failed**: {r['error'].splitlines()[0]}"]
    lines += _frontier(rows)
    lines += _checks(rows)
    lines += [
        "",
        "LPIPS is 'unavailable' where torchvision's AlexNet weights are not in the torch hub cache (no download).",
        "MLP weights: fp32 = 4 bytes per coarse+fine MLP parameter in the checkpoint; file = the int8 export's size.",
        "Train samples/s of runs trained side by side share one device: compare them with each other, not with a "
        "run alone.",
        "Eval rays/s: one ns-eval after another, each timed alone (one pass over 3 views), so any other load on the "
        "machine at that moment lowers it; for integer vs fp32 speed see the interleaved measurement of "
        "scripts/bench_int8.py.",
        "",
        f"![test views]({out.name}_view.png)",
        "",
        f"![size vs PSNR]({out.name}_size_psnr.png)",
    ]
    return "\n".join(lines) + "\n"


def _table1_answer(rows: Dict) -> List[str]:
    """Table 1's question answered: fused minus unfused PSNR of the int8 exports, and their losses to fp32."""

    def gap(fused: str, unfused: str) -> Optional[float]:
        if fused in rows and unfused in rows and "int8" in rows[fused] and "int8" in rows[unfused]:
            return rows[fused]["int8"]["psnr"] - rows[unfused]["int8"]["psnr"]
        return None

    default, from0 = gap("qat-w8a8-fused", "qat-w8a8-unfused"), gap("qat-w8a8-fused-from0", "qat-w8a8-unfused-from0")
    if default is None and from0 is None:
        return []
    lines = ["", "Fused minus unfused (int8 exports): "]
    lines[-1] += f"QAT after the fp32 warm-up {_fmt(default, '+.3f')} dB; QAT from step 0 {_fmt(from0, '+.3f')} dB"
    lines[-1] += " (the paper: +6.20 dB)."
    if from0 is not None and "fp32" in rows:
        fp32 = rows["fp32"]["trained"]["psnr"]
        lines.append(
            f"From step 0, fused loses {fp32 - rows['qat-w8a8-fused-from0']['int8']['psnr']:.2f} dB and unfused "
            f"{fp32 - rows['qat-w8a8-unfused-from0']['int8']['psnr']:.2f} dB against fp32."
        )
    return lines


def _frontier(rows: Dict) -> List[str]:
    """The fused int8 exports by size against fp32: bytes, how much smaller, PSNR and its loss."""

    fused = [r for n, r in rows.items() if "int8" in r and n.endswith("-fused")]
    if not fused or "fp32" not in rows:
        return []
    fp32 = rows["fp32"]["trained"]["psnr"]
    lines = [
        "",
        "## Size-quality frontier (fused, int8 exports)",
        "",
        "| variant | file bytes | vs fp32 weights | PSNR | minus fp32 (dB) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| fp32 | {rows['fp32']['fp32_weight_bytes']:,} | 1.00x | {fp32:.3f} | |",
    ]
    for r in sorted(fused, key=lambda r: -r["export_file_bytes"]):
        ratio = rows["fp32"]["fp32_weight_bytes"] / r["export_file_bytes"]
        lines.append(
            f"| {r['variant']} | {r['export_file_bytes']:,} | {ratio:.2f}x smaller | {r['int8']['psnr']:.3f} | "
            f"{r['int8']['psnr'] - fp32:+.3f} |"
        )
    return lines


def _checks(rows: Dict) -> List[str]:
    """The limits the QAT runs are held to, each with its measured value and whether it is met."""

    if "fp32" not in rows or "qat-w8a8-fused" not in rows:
        return []
    fp32 = rows["fp32"]["trained"]["psnr"]
    loss = fp32 - rows["qat-w8a8-fused"]["trained"]["psnr"]
    gaps = [abs(r["int8_minus_trained_psnr_db"]) for r in rows.values() if "int8_minus_trained_psnr_db" in r]

    def verdict(ok: bool) -> str:
        return "ok" if ok else "NOT MET"

    checks = [
        f"QAT w8a8 fused loses {loss:.4f} dB against fp32 (limit 0.1: {verdict(loss <= 0.1)})",
        f"largest |int8 export - fake-quantized| {max(gaps):.5f} dB (limit 0.02: {verdict(max(gaps) <= 0.02)})",
    ]
    for name in ("qat-w3a8-fused", "qat-w2a8-fused"):
        if name in rows and "int8" in rows[name]:
            low = fp32 - rows[name]["int8"]["psnr"]
            checks.append(f"{name} loses {low:.3f} dB (limit {LOW_BIT_LIMIT_DB}: {verdict(low <= LOW_BIT_LIMIT_DB)})")
    return ["", "Checks: " + "; ".join(checks) + "."]
