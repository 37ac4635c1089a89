"""Kernel choice: exactness self-checks, measured speed, every decision branch forced, and the fallbacks exact."""

import copy
import time
from typing import Optional

import pytest
import torch

from nerfqat_plugin.nerf.mlp import NeRFMLP
from nerfqat_plugin.quant import QuantConfig, dispatch, set_quant_state, set_train_kernels
from nerfqat_plugin.quant.dispatch import FP32, TrainPath, int8_kernel, onednn_exact, pick, train_path
from nerfqat_plugin.quant.int8 import IntLinear, convert_to_int, set_kernel
from nerfqat_plugin.quant.kernels import onednn_available, onednn_prepack, onednn_split_product

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_decisions():
    dispatch.reset()
    yield
    dispatch.reset()


def _vnni() -> bool:
    isa = dispatch.cpu_isa()
    return isa["avx512_vnni"] or isa["avx_vnni"] or isa["amx_int8"]


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN int8 Linear")
def test_onednn_self_check_finds_the_int16_saturation_exactly_where_vnni_is_missing():
    # without VNNI, pairs of uint8 x int8 products add into a saturating int16: 2 * 255 * 127 > 32767
    assert onednn_exact(255, 127) == _vnni(), dispatch.isa_summary()
    # a 7-bit side keeps every pair below 32767 (2 * 127 * 127, 2 * 255 * 63): exact on every x86 CPU; so do
    # activations up to 128, the split product's halves (2 * 128 * 127 = 32512)
    assert onednn_exact(127, 127) and onednn_exact(255, 63) and onednn_exact(128, 127)


def test_pick_keeps_the_baseline_unless_another_is_clearly_faster():
    assert pick({"fp32": 1.0, "bf16": 7.0}, "fp32", 1.2) == "fp32"  # emulated bf16 (AVX2)
    assert pick({"fp32": 1.0, "bf16": 0.5}, "fp32", 1.2) == "bf16"  # native bf16
    assert pick({"fp32": 1.0, "onednn": 0.95}, "fp32", 1.1) == "fp32"  # within the margin: not worth it
    assert pick({"float": 1.0, "int": 14.0, "onednn": 0.4}, "float", 1.1) == "onednn"


def _machine(monkeypatch, exact: bool, products: dict, grads: dict) -> None:
    """Pretend this CPU's oneDNN self-check says ``exact`` and its timings are ``products`` / ``grads`` (seconds)."""
    monkeypatch.setattr(dispatch, "onednn_exact", lambda a, w: exact and onednn_available())

    def timings(device, k, n, act_qmax, weight_qmax, candidates, rows):
        assert set(candidates) <= set(products), candidates
        return {c: products[c] for c in candidates}, dict(grads)

    monkeypatch.setattr(dispatch, "_time_train", timings)


def test_avx2_machine_trains_in_fp32(monkeypatch):
    """No VNNI (oneDNN int8 inexact, not even a candidate), bf16 emulated at 7x the fp32 time."""
    _machine(monkeypatch, False, {"fp32": 1.0, "onednn": 0.4}, {"fp32": 1.0, "bf16": 7.0})
    assert train_path(CPU, 256, 256, 255, 127, "auto") == FP32


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN int8 Linear")
def test_vnni_bf16_machine_trains_on_int8_and_bf16(monkeypatch):
    _machine(monkeypatch, True, {"fp32": 1.0, "onednn": 0.4}, {"fp32": 1.0, "bf16": 0.45})
    assert train_path(CPU, 256, 256, 255, 127, "auto") == TrainPath("onednn", "bf16")


def test_bf16_gradients_are_not_even_timed_on_a_cpu_that_emulates_bf16(monkeypatch):
    monkeypatch.setattr(dispatch, "cpu_isa", lambda: {"avx2": True, "avx512_bf16": False, "amx_bf16": False})
    products, grads = dispatch._time_train(CPU, 32, 16, 255, 127, ["fp32"], 256)
    assert set(grads) == {"fp32"} and set(products) == {"fp32"}
    monkeypatch.setattr(dispatch, "cpu_isa", lambda: {"avx2": True, "avx512_bf16": True, "amx_bf16": False})
    assert set(dispatch._time_train(CPU, 32, 16, 255, 127, ["fp32"], 256)[1]) == {"fp32", "bf16"}


def test_explicit_modes(monkeypatch):
    _machine(monkeypatch, False, {"fp32": 1.0}, {"fp32": 1.0, "bf16": 7.0})
    assert train_path(CPU, 256, 256, 255, 127, False) == FP32
    # True: fast on paper, unmeasured, but still only exact products: fp32 codes products where oneDNN is inexact
    assert train_path(CPU, 256, 256, 255, 127, True) == TrainPath("fp32", "bf16")


def test_measured_decision_is_made_once_and_said_once(capsys):
    first = train_path(CPU, 64, 32, 255, 127, "auto")
    second = train_path(CPU, 64, 32, 255, 127, "auto")
    assert first == second
    err = capsys.readouterr().err
    assert err.count("fake-quantized Linear 64->32") == 1, err
    assert "codes product" in err and "measured" in err
    assert any("64->32" in line for line in dispatch.decisions())


def _timings(seconds: dict, rows_seen: Optional[list] = None):
    """A ``time_kernel`` for ``int8_kernel`` whose candidates take ``seconds`` (a sleep each); the row counts it is
    asked for go to ``rows_seen``."""

    def time_kernel(candidate, rows, compiled):
        if rows_seen is not None and compiled:
            rows_seen.append(rows)
        return lambda: time.sleep(seconds[candidate])

    return time_kernel


def test_named_integer_kernel_that_is_not_exact_here_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(dispatch, "onednn_exact", lambda a, w: False)
    timings = _timings({"fp32": 0.002, "int_mm": 0.02})
    assert int8_kernel(CPU, 64, 32, 255, 127, "onednn", timings) == "fp32"
    assert "integer kernel 'onednn' is not exact or not available" in capsys.readouterr().err
    assert int8_kernel(CPU, 64, 32, 255, 127, "int", timings) == "int_mm"  # exact and available: used as asked
    assert int8_kernel(CPU, 64, 32, 255, 127, "float", timings) == "fp32"


YES, NO = (lambda: True), (lambda: False)
"""``fused_exact`` answers: the fused kernel's self-check passes, or fails."""


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN int8 Linear")
def test_integer_kernel_choice_on_each_class_of_cpu(monkeypatch):
    """Without VNNI: the fused kernel is out, the split oneDNN product is in; with it: the reverse."""
    monkeypatch.setattr(dispatch, "onednn_exact", lambda a, w: a <= 128)  # an AVX2 CPU: 2 * 128 * 127 < 32767
    assert dispatch.int8_candidates(CPU, 255, 127, "auto", YES) == ["fp32", "int_mm", "onednn_split"]
    assert dispatch.int8_candidates(CPU, 127, 127, "auto", YES) == ["fp32", "int_mm", "onednn", "onednn_fused"]
    times = {"fp32": 0.004, "int_mm": 0.05, "onednn_split": 0.002, "onednn": 0.001, "onednn_fused": 0.0005}
    assert int8_kernel(CPU, 256, 256, 255, 127, "auto", _timings(times), fused_exact=YES) == "onednn_split"
    dispatch.reset()
    monkeypatch.setattr(dispatch, "onednn_exact", lambda a, w: True)  # VNNI
    assert dispatch.int8_candidates(CPU, 255, 127, "auto", YES) == ["fp32", "int_mm", "onednn", "onednn_fused"]
    assert int8_kernel(CPU, 256, 256, 255, 127, "auto", _timings(times), fused_exact=YES) == "onednn_fused"
    assert int8_kernel(CPU, 256, 256, 255, 127, "int", _timings(times), fused_exact=YES) == "onednn"


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN int8 Linear")
def test_a_named_integer_product_does_not_blame_the_fused_kernel(monkeypatch, capsys):
    """ "int" never offers the fused kernel (it is no product followed by training's epilogue): its decision does not
    say the fused kernel was left out for its rounding."""
    monkeypatch.setattr(dispatch, "onednn_exact", lambda a, w: True)
    times = {"fp32": 0.004, "int_mm": 0.002, "onednn": 0.001, "onednn_fused": 0.0005}
    assert int8_kernel(CPU, 256, 256, 255, 127, "int", _timings(times), fused_exact=YES) == "onednn"
    said = capsys.readouterr().err
    assert "integer Linear 256->256" in said and "(int)" in said and "left out" not in said


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN int8 Linear")
def test_a_fused_kernel_that_rounds_otherwise_runs_only_when_named(monkeypatch, capsys):
    """A VNNI CPU whose fused kernel fails its self-check: "auto" keeps to the exact kernels even though the fused
    one is the fastest, and says why; "onednn" still runs it."""
    monkeypatch.setattr(dispatch, "onednn_exact", lambda a, w: True)
    assert dispatch.int8_candidates(CPU, 255, 127, "auto", NO) == ["fp32", "int_mm", "onednn"]
    times = {"fp32": 0.004, "int_mm": 0.05, "onednn": 0.001, "onednn_fused": 0.0005}
    assert int8_kernel(CPU, 256, 256, 255, 127, "auto", _timings(times), fused_exact=NO) == "onednn"
    assert "onednn_fused left out: its requantization does not give training's codes" in capsys.readouterr().err
    assert int8_kernel(CPU, 256, 256, 255, 127, "onednn", _timings(times), fused_exact=NO) == "onednn_fused"
    # without a self-check to ask, "auto" never takes it
    assert dispatch.int8_candidates(CPU, 255, 127, "auto", lambda: False) == ["fp32", "int_mm", "onednn"]


def test_decisions_are_timed_on_the_rows_a_layer_is_given(monkeypatch):
    """A training batch and a render tile are timed on their own row counts (powers of two, capped), each once."""
    assert [dispatch.timing_rows(CPU, r) for r in (1, 300, 2048, 2049, 49152, None)] == [
        256, 512, 2048, 4096, dispatch.MAX_TIMING_ROWS["cpu"], dispatch.MAX_TIMING_ROWS["cpu"]
    ]  # fmt: skip
    seen = []

    def timings(device, k, n, act_qmax, weight_qmax, candidates, rows):
        seen.append(rows)
        return {c: 1.0 for c in candidates}, {"fp32": 1.0}

    monkeypatch.setattr(dispatch, "_time_train", timings)
    for rows in (16384, 16000, 2048, 49152):
        train_path(CPU, 64, 32, 255, 127, "auto", rows)
    assert seen == [16384, 2048]  # 16000 shares 16384's bucket; 49152 is timed on the cap, 16384
    integer_rows: list = []
    for rows in (2048, 2000, 100000):
        int8_kernel(CPU, 64, 32, 255, 127, "auto", _timings({"fp32": 0, "int_mm": 0, "onednn_split": 0, "onednn": 0},
                    integer_rows), rows)  # fmt: skip
    assert set(integer_rows) == {2048, dispatch.MAX_TIMING_ROWS["cpu"]}


def _trained_mlp(config: QuantConfig) -> NeRFMLP:
    torch.manual_seed(0)
    mlp = NeRFMLP(63, 27, config, num_layers=3, layer_width=48, skip_layer=1, view_width=24).train()
    set_quant_state(mlp, active=True, observe=True)
    for _ in range(2):
        raw, h = mlp.density(torch.rand(256, 63) * 2 - 1)
        mlp.color(h, torch.rand(256, 27) * 2 - 1)
    return mlp.eval()


def test_without_vnni_every_chosen_path_gives_the_reference_codes(monkeypatch):
    """Force the 'no VNNI' decision (also on a VNNI machine): training's fast path and the export's default kernel
    fall back to exact products and reproduce the reference bit for bit."""
    monkeypatch.setattr(dispatch, "onednn_exact", lambda a, w: False)
    reference = _trained_mlp(QuantConfig())
    pos, dirs = torch.rand(500, 63) * 2 - 1, torch.rand(500, 27) * 2 - 1
    with torch.no_grad():
        raw_ref, h = reference.density(pos)
        rgb_ref = reference.color(h, dirs)

        fast = copy.deepcopy(reference)
        set_train_kernels(fast, compile=False, matmul=True)
        raw_fast, h = fast.density(pos)
        assert torch.equal(raw_fast, raw_ref) and torch.equal(fast.color(h, dirs), rgb_ref)
        assert all(m.train_path(CPU).product != "onednn" for m in fast.modules() if hasattr(m, "train_path"))

        integer = convert_to_int(copy.deepcopy(reference))
        set_kernel(integer, "onednn", compile=False)
        raw_int, h = integer.density(pos)
        assert torch.equal(raw_int, raw_ref) and torch.equal(integer.color(h, dirs), rgb_ref)
        kernels = {m.resolved_kernel(CPU) for m in integer.modules() if isinstance(m, IntLinear)}
        assert "onednn" not in kernels, kernels


def test_machine_report_names_the_isa_and_the_decisions():
    train_path(CPU, 16, 8, 255, 127, "auto")
    report = dispatch.machine_report()
    assert set(report["cpu_isa"]) >= {"avx2", "avx512_vnni", "avx512_bf16"}
    assert report["kernel_decisions"] and "16->8" in report["kernel_decisions"][0]


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN int8 Linear")
@pytest.mark.parametrize("depth", [27, 63, 319])
@pytest.mark.parametrize("zero_point", [0, 3, 128])
def test_split_product_is_exact_at_the_extremes(depth, zero_point):
    """The 7-bit split product on every CPU (it needs no VNNI): codes at 255 and 128 against rows of +-127, mixed
    signs and random codes, with the zero point folded into the bias."""
    g = torch.Generator().manual_seed(depth + zero_point)
    rows = [torch.full((depth,), 127.0), torch.full((depth,), -127.0)]
    rows.append(torch.where(torch.arange(depth) % 2 == 0, 127.0, -127.0))
    rows.append(torch.randint(-127, 128, (depth,), generator=g).float())
    w = torch.stack(rows)
    codes = torch.cat([
        torch.full((4, depth), 255, dtype=torch.uint8),
        torch.full((4, depth), 128, dtype=torch.uint8),
        torch.randint(0, 256, (64, depth), generator=g, dtype=torch.uint8),
    ])  # fmt: skip
    expected = (codes.double() - zero_point) @ w.double().T
    got = onednn_split_product(codes, zero_point, onednn_prepack(w, split=True), w.sum(dim=1))
    assert got.dtype == torch.float32 and torch.equal(got.double(), expected)


def test_integer_candidates_far_behind_in_a_first_eager_round_are_not_timed_on_the_full_rows(monkeypatch, capsys):
    """_int_mm on an AVX2 CPU (10-20x slower than fp32) costs seconds to time on 16k rows: a first eager round on a
    few rows drops it; the others are timed compiled, on the rows the layer is given."""
    monkeypatch.setattr(dispatch, "onednn_exact", lambda a, w: a <= 128)
    calls = []

    def time_kernel(candidate, rows, compiled):
        calls.append((candidate, rows, compiled))
        return lambda: time.sleep({"fp32": 0.001, "int_mm": 0.02, "onednn_split": 0.0012}[candidate])

    assert int8_kernel(CPU, 256, 256, 255, 127, "auto", time_kernel, 16384) == "fp32"
    assert {c for c, rows, compiled in calls if not compiled} == {"fp32", "int_mm", "onednn_split"}
    assert {(c, rows) for c, rows, compiled in calls if compiled} == {("fp32", 16384), ("onednn_split", 16384)}
    assert "ms on 1024 rows" in capsys.readouterr().err  # the dropped candidate's first-round time is said
