"""The fern benchmark harness, dry-run end to end on a tiny scene (so a GPU slot is never its first run)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nerfqat_plugin.tools.runs import command_env
from nerfqat_plugin.tools.scenes import write_llff_scene
from tests.conftest import load_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def test_runs_are_compared_at_the_largest_step_all_of_them_saved():
    compared_step = load_file(SCRIPT).compared_step
    step, why = compared_step({"fp32": [250, 500, 750, 1000], "w8a8": [250, 500, 750], "w2a8": [250, 500]})
    assert step == 500 and "slowest: w2a8" in why
    assert compared_step({"a": [5], "b": [5]}) == (5, "every run finished at step 5")
    step, why = compared_step({"a": [4], "b": [6]})
    assert step is None and "no checkpoint step saved by every run" in why


def test_presets_name_catalogue_variants_and_a_name_is_catalogued_once():
    bench = load_file(SCRIPT)
    catalogue = sys.modules["benchlib.variants"].catalogue
    for preset in bench.FERN_PRESETS.values():
        assert set(preset.variants) <= set(bench.VARIANTS)
    fp32, vanilla = bench.VARIANTS["fp32"], bench.VARIANTS["vanilla-nerf"]
    assert catalogue(fp32, vanilla) == {"fp32": fp32, "vanilla-nerf": vanilla}
    with pytest.raises(ValueError, match=r"more than one entry named \['fp32'\]"):
        catalogue(fp32, vanilla, fp32)


def test_reuse_trained_takes_only_runs_that_saved_their_last_step(tmp_path: Path):
    bench = load_file(SCRIPT)
    b = bench.Benchmark(preset="tiny", workdir=tmp_path)
    training = bench.Training(b.data, 4, bench.FERN_PRESETS["tiny"].model, 10, 5, "cpu", b.seed)
    run = bench.Run(bench.VARIANTS["fp32"], tmp_path / "fp32", training)
    assert not run.finished_before(10)  # nothing trained yet
    checkpoints = run.run_dir / "nerfstudio_models"
    checkpoints.mkdir(parents=True)
    zipfile.ZipFile(checkpoints / "step-000000005.ckpt", "w").close()
    (checkpoints / "step-000000009.ckpt").write_bytes(b"")  # a run stopped while saving its last step
    assert not run.finished_before(10)
    zipfile.ZipFile(checkpoints / "step-000000009.ckpt", "w").close()
    assert run.finished_before(10)


def test_dry_run_trains_side_by_side_stops_on_time_and_compares_at_a_common_step(tmp_path: Path):
    scene = write_llff_scene(tmp_path / "scene", num_images=9)
    out = tmp_path / "report" / "fern_tiny"
    cmd = [
        sys.executable, str(SCRIPT), "--preset", "tiny", "--data", str(scene), "--workdir", str(tmp_path / "runs"),
        "--output", str(out), "--steps", "100000", "--save-every", "5", "--train-seconds", "60",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=command_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    errors = {n: r["error"] for n, r in rows.items() if "error" in r}
    assert set(rows) == {"fp32", "qat-w8a8-fused"} and not errors, errors
    (start_a, end_a), (start_b, end_b) = (rows[n]["train_window_unix_s"] for n in rows)
    assert start_a < end_b and start_b < end_a  # trained at the same time
    step = result["compared_step"]
    assert step == max(set(rows["fp32"]["steps_saved"]) & set(rows["qat-w8a8-fused"]["steps_saved"]))
    assert step >= 5 and all(rows[n]["steps_saved"][-1] < 100000 - 1 for n in rows)  # stopped by the wall time
    qat = rows["qat-w8a8-fused"]
    assert qat["export_file_bytes"] > 0 and abs(qat["int8_minus_trained_psnr_db"]) < 0.02
    export_config = Path(qat["export"])
    assert f"step-{step:09d}.ckpt" in [p.name for p in (export_config.parent / "nerfstudio_models").iterdir()]
    report = out.with_suffix(".md").read_text()
    assert f"**Compared at step {step}**" in report and "qat-w8a8-fused (ours, int8 export)" in report
    for figure in ("_view.png", "_size_psnr.png"):
        assert (out.parent / f"{out.name}{figure}").stat().st_size > 1000


def test_report_is_rebuilt_from_the_json_alone(tmp_path: Path):
    """The committed CPU report is what the script makes of the committed JSON."""
    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "fern_cpu"
    copy = tmp_path / "fern_cpu"
    copy.with_suffix(".json").write_text(committed.with_suffix(".json").read_text())
    cmd = [sys.executable, str(SCRIPT), "--report-only", "--output", str(copy)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert copy.with_suffix(".md").read_text() == committed.with_suffix(".md").read_text()
