"""Which kernel runs where: chosen once per process, device and layer shape, from self-checks and timings.

Exactness is checked, never assumed: before oneDNN's int8 product is used, ``onednn_exact`` multiplies a
worst-case block (codes at their extremes) through it and compares with the exact product. On x86 CPUs without
VNNI, oneDNN adds pairs of uint8 x int8 products into a saturating int16, so 8-bit activations times 8-bit weights
overflow there (255 * 127 * 2 > 32767) while 7-bit weights or activations do not; there the product runs on the
activation codes split into their low 7 bits and their top bit (``kernels.onednn_split_product``: values up to
128), where that is exact.

Speed is measured, not assumed: among the exact candidates, a short timing on the layer's own shape and on as many
rows as the layer is given (the training batch, the render tile; up to ``MAX_TIMING_ROWS``), once per process,
shape and power of two of rows, picks the fastest; fp32 stays unless another is clearly faster, so no choice is
slower than fp32. bf16 matrix products, for instance, are several times faster than fp32 on CPUs with
native bf16 and on GPUs, and about 7x slower on CPUs that emulate them (AVX2).

Each decision is said once on stderr and kept in ``decisions()`` for benchmark reports.
"""

from __future__ import annotations

import os
import sys
import time
from functools import lru_cache
from typing import Callable, Dict, List, Literal, NamedTuple, Optional, Tuple, Union

import torch

from nerfqat_plugin.quant.kernels import (
    Product,
    codes_product,
    grad_product,
    mm_fp32_out_supported,
    onednn_available,
    onednn_prepack,
    onednn_product,
)

Kernel = Literal["auto", "onednn", "int", "float"]
MatmulMode = Union[bool, Literal["auto"]]

PRODUCT_MARGIN = 1.1
"""An exact product replaces fp32 only when measured at least this many times faster."""
GRAD_MARGIN = 1.2
"""bf16 gradient products (which round the gradients) replace fp32 only when at least this many times faster."""

MAX_TIMING_ROWS = {"cpu": 16384, "cuda": 65536}
"""Most rows a candidate is timed on (a decision then stays under a second per shape); larger batches are timed
on this many, where every candidate has long reached its full speed."""
MIN_TIMING_ROWS = 256
"""Fewest rows a candidate is timed on."""
SCREEN_ROWS = 1024
"""Rows of the integer kernels' first, eager timing round, which drops the candidates far behind the best before
the others are timed as they run (compiled, on the layer's rows)."""
SCREEN_FACTOR = 3.0
"""A candidate this many times slower than the best in the first round is not timed further (``_int_mm`` on
AVX2 CPUs, 10-20x slower than fp32)."""

_decisions: Dict[tuple, str] = {}


class TrainPath(NamedTuple):
    """How a fake-quantized Linear multiplies while training."""

    product: Product
    """The product of codes (forward), one of ``kernels``' exact products."""
    grad: Literal["bf16", "fp32"]
    """Operand type of the gradient products (backward)."""

    @property
    def codes_dtype(self) -> torch.dtype:
        """What activation codes travel as: bf16 (exact for codes) when the gradient products take bf16."""
        return torch.bfloat16 if self.grad == "bf16" else torch.float32


FP32 = TrainPath("fp32", "fp32")


# --- the machine -------------------------------------------------------------------------------------------------


def cpu_isa() -> Dict[str, bool]:
    """The CPU features that decide the fast paths (as PyTorch's cpuinfo reports them)."""
    caps = dict(torch.cpu.get_capabilities()) if hasattr(torch.cpu, "get_capabilities") else {}
    names = ("avx2", "avx512_f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return {name: bool(caps.get(name, False)) for name in names}


def isa_summary() -> str:
    """One line: the features present, then those absent, e.g. 'avx2 (no avx512_f, avx512_vnni, ...)'."""
    isa = cpu_isa()
    have = " ".join(k for k, v in isa.items() if v) or "none of these"
    lack = [k for k, v in isa.items() if not v]
    return have + (f" (no {', '.join(lack)})" if lack else "")


def machine_report() -> Dict[str, object]:
    """What benchmarks print beside their numbers: the CPU's ISA and every kernel decision so far."""
    return {"cpu_isa": cpu_isa(), "kernel_decisions": decisions()}


def decisions() -> List[str]:
    """Every decision made in this process, one line each."""
    return list(_decisions.values())


def _say(key: tuple, line: str) -> None:
    if key not in _decisions:
        _decisions[key] = line
        print(f"nerf-qat: {line}", file=sys.stderr, flush=True)


def reset() -> None:
    """Forget every cached decision and self-check (tests)."""
    _decisions.clear()
    _onednn_exact.cache_clear()
    _train_path.cache_clear()
    _int8_cache.clear()


# --- exactness -----------------------------------------------------------------------------------------------------


def onednn_exact(act_qmax: int, weight_qmax: int) -> bool:
    """Whether oneDNN's int8 product of codes in ``[0, act_qmax]`` and ``[-weight_qmax, weight_qmax]`` is exact here.

    Worst cases: every activation at ``act_qmax`` against rows of ``+weight_qmax``, of ``-weight_qmax`` and of mixed
    signs, then random codes; several depths (pairs and groups of four are what vector units add first). Checked
    once per process and pair of ranges.
    """
    return _onednn_exact(act_qmax, weight_qmax)


@lru_cache(maxsize=None)
def _onednn_exact(act_qmax: int, weight_qmax: int) -> bool:
    if not onednn_available():
        return False
    generator = torch.Generator().manual_seed(0)
    for depth in (27, 64, 256):
        rows = [torch.full((depth,), float(weight_qmax)), torch.full((depth,), -float(weight_qmax))]
        rows.append(torch.where(torch.arange(depth) % 2 == 0, float(weight_qmax), -float(weight_qmax)))
        rows.append(torch.randint(-weight_qmax, weight_qmax + 1, (depth,), generator=generator).float())
        w = torch.stack(rows)
        extreme = torch.full((8, depth), float(act_qmax))
        random = torch.randint(0, act_qmax + 1, (64, depth), generator=generator).float()
        a = torch.cat([extreme, random])
        got = onednn_product(a.to(torch.uint8), 0, onednn_prepack(w), w.shape[0])
        if not torch.equal(got, a @ w.T):
            return False
    return True


# --- timing --------------------------------------------------------------------------------------------------------


def timings(candidates: Dict[str, Callable[[], object]], device: torch.device, repeats: int = 5) -> Dict[str, float]:
    """Best time of each candidate over ``repeats`` rounds that run them in turn (after one warm-up each), so that a
    busy moment of the machine hits them alike and one quiet run of each suffices."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = {name: float("inf") for name in candidates}
    with torch.no_grad():
        for fn in candidates.values():
            fn()
        for _ in range(repeats):
            for name, fn in candidates.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run on bf16 units here: every CUDA device we run on, CPUs with AVX-512 bf16 or
    AMX. Elsewhere (AVX2) they are emulated, several times slower than fp32, and never worth measuring."""
    if device.type != "cpu":
        return True
    isa = cpu_isa()
    return isa["avx512_bf16"] or isa["amx_bf16"]


def pick(seconds: Dict[str, float], baseline: str, margin: float) -> str:
    """The fastest candidate, or ``baseline`` unless the fastest beats it by ``margin`` (so never slower)."""
    best = min(seconds, key=lambda k: seconds[k])
    return best if best == baseline or seconds[best] * margin <= seconds[baseline] else baseline


def timing_rows(device: torch.device, rows: Optional[int]) -> int:
    """How many rows a layer given ``rows`` rows is timed on: the next power of two, within ``MIN_TIMING_ROWS`` and
    ``MAX_TIMING_ROWS`` (decisions are made, and kept, per such bucket); None: the largest."""
    cap = MAX_TIMING_ROWS.get(device.type, MAX_TIMING_ROWS["cpu"])
    if rows is None:
        return cap
    return min(cap, max(MIN_TIMING_ROWS, 1 << max(int(rows) - 1, 0).bit_length()))


def _fmt(seconds: Dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in seconds.items())


def _where(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu [{isa_summary()}]"


# --- which products are exact here --------------------------------------------------------------------------------


def integer_products(device: torch.device, act_qmax: int, weight_qmax: int) -> List[Product]:
    """The integer-unit products that are exact on ``device`` for these code ranges (``kernels`` names them)."""
    if device.type == "cuda":
        return ["int_mm"]
    if device.type != "cpu":
        return []
    out: List[Product] = ["int_mm"]
    if onednn_exact(act_qmax, weight_qmax):
        out.append("onednn")
    elif act_qmax > 127 and onednn_exact(128, weight_qmax):
        out.append("onednn_split")
    return out


def float_products(device: torch.device) -> List[Product]:
    """fp32, and bf16 operands with fp32 results where the device has them: exact for codes of up to 8 bits."""
    return ["fp32", "bf16"] if mm_fp32_out_supported(device.type) else ["fp32"]


# --- training ------------------------------------------------------------------------------------------------------


def train_product_candidates(device: torch.device, act_qmax: int, weight_qmax: int) -> List[Product]:
    """The exact products of codes training can take on this device, fp32 first (``_int_mm`` is left out: slower
    than oneDNN wherever both exist)."""
    return float_products(device) + [p for p in integer_products(device, act_qmax, weight_qmax) if p != "int_mm"]


def train_path(
    device: torch.device,
    in_features: int,
    out_features: int,
    act_qmax: int,
    weight_qmax: int,
    mode: MatmulMode,
    rows: Optional[int] = None,
) -> TrainPath:
    """How a fake-quantized Linear of this shape, given batches of ``rows`` rows, multiplies on ``device``.

    ``mode``: False, fp32 throughout; True, the fastest exact product on paper (int8 or bf16) and bf16 gradient
    products, unmeasured; "auto", measured on this shape and ``timing_rows(device, rows)`` rows (see the module
    docstring).
    """
    if mode is False:
        return FP32
    timed = timing_rows(device, rows) if mode == "auto" else 0
    return _train_path(device.type, device.index, in_features, out_features, act_qmax, weight_qmax, mode, timed)


@lru_cache(maxsize=None)
def _train_path(device_type, index, k, n, act_qmax, weight_qmax, mode, rows) -> TrainPath:
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    products = train_product_candidates(device, act_qmax, weight_qmax)
    if mode is True:
        return TrainPath(products[-1], "bf16")
    seconds, grad_seconds = _time_train(device, k, n, act_qmax, weight_qmax, products, rows)
    path = TrainPath(pick(seconds, "fp32", PRODUCT_MARGIN), pick(grad_seconds, "fp32", GRAD_MARGIN))  # type: ignore[arg-type]
    _say(
        ("train", device_type, index, k, n, act_qmax, weight_qmax, rows),
        f"fake-quantized Linear {k}->{n} on {_where(device)}, {rows} rows: codes product {path.product}, gradient "
        f"products {path.grad} (measured: products {_fmt(seconds)}; gradients {_fmt(grad_seconds)}"
        f"{'' if 'bf16' in grad_seconds else ', bf16 emulated on this CPU'})",
    )
    _hint_once(device)
    return path


def _time_train(
    device: torch.device, k: int, n: int, act_qmax: int, weight_qmax: int, products: List[Product], rows: int
) -> Tuple[Dict[str, float], Dict[str, float]]:
    g = torch.Generator().manual_seed(0)
    zero_point = torch.tensor(3.0, device=device)
    centered = torch.randint(0, act_qmax + 1, (rows, k), generator=g).float().to(device) - zero_point
    w = torch.randint(-weight_qmax, weight_qmax + 1, (n, k), generator=g).float().to(device)
    grad = torch.randn(rows, n, generator=g).to(device)
    candidates = {p: (lambda p=p: codes_product(centered, zero_point, w, p, False)) for p in products}
    grad16, w16 = grad.bfloat16(), w.bfloat16()
    grads: Dict[str, Callable[[], object]] = {"fp32": lambda: grad_product(grad, w, torch.float32)}
    if native_bf16(device):
        grads["bf16"] = lambda: grad_product(grad16, w16, torch.bfloat16)
    return timings(candidates, device), timings(grads, device)


_hinted = False


def _hint_once(device: torch.device) -> None:
    """On a CPU, how to keep OpenMP threads from spinning when other processes share the cores (said once)."""
    global _hinted
    if device.type == "cpu" and not os.environ.get("OMP_WAIT_POLICY") and not _hinted:
        _hinted = True
        print(
            "nerf-qat: tip: on a CPU that other processes share, start ns-train with OMP_WAIT_POLICY=PASSIVE "
            "(idle OpenMP threads then sleep instead of spinning; see the README's CPU notes)",
            file=sys.stderr,
            flush=True,
        )


# --- integer export ------------------------------------------------------------------------------------------------

FUSED = "onednn_fused"
"""The integer export's fused oneDNN kernel: product, bias, ReLU and requantization in one call (oneDNN's rounding,
which ``rounding`` follows; ``int8.fused_exact`` checks on this machine that the two agree)."""


def int8_candidates(
    device: torch.device, act_qmax: int, weight_qmax: int, requested: Kernel, fused_exact: Callable[[], bool]
) -> List[str]:
    """What an integer Linear may run for ``requested``: products of ``kernels`` followed by training's epilogue
    (bit-exact), or ``FUSED``: when named, wherever oneDNN's single product is exact; under "auto" only where
    ``fused_exact()`` also finds its requantization giving training's codes (a self-check, run when needed)."""
    integer = integer_products(device, act_qmax, weight_qmax)
    if requested == "float":
        return ["fp32"]
    if requested == "int":
        return [p for p in integer]
    if requested == "onednn":
        return [FUSED] if "onednn" in integer else []
    fused = [FUSED] if "onednn" in integer and fused_exact() else []
    return float_products(device) + integer + fused


def int8_kernel(
    device: torch.device,
    in_features: int,
    out_features: int,
    act_qmax: int,
    weight_qmax: int,
    requested: Kernel,
    time_kernel: Callable[[str, int, bool], Callable[[], object]],
    rows: Optional[int] = None,
    fused_exact: Callable[[], bool] = lambda: False,
) -> str:
    """What an integer Linear of this shape, given ``rows`` rows at a time, runs on ``device`` for ``requested``
    ("auto", "onednn", "int", "float"): a product name of ``kernels`` (then training's epilogue) or ``FUSED``.
    Several candidates are timed with ``time_kernel(candidate, rows, compiled)``, a callable running the whole
    layer with that kernel on a sample batch of that many rows (its epilogue compiled or not): first eagerly on
    ``SCREEN_ROWS`` rows, then, those within ``SCREEN_FACTOR`` of the best, as the layer runs on
    ``timing_rows(device, rows)`` rows. A request that has none here falls back to "auto", said once.
    ``fused_exact``: see ``int8_candidates``."""
    timed = timing_rows(device, rows)
    key = (device.type, device.index, in_features, out_features, act_qmax, weight_qmax)
    if key + (requested, timed) not in _int8_cache:
        candidates = int8_candidates(device, act_qmax, weight_qmax, requested, fused_exact)
        if not candidates:
            kernel = int8_kernel(
                device, in_features, out_features, act_qmax, weight_qmax, "auto", time_kernel, rows, fused_exact
            )
            _say(key + ("fallback", requested), f"integer kernel {requested!r} is not exact or not available on "
                 f"{_where(device)}: Linear {in_features}->{out_features} runs {kernel}")  # fmt: skip
        elif len(candidates) == 1:
            kernel = candidates[0]
        else:
            samples, failed = {}, {}
            for c in candidates:  # a kernel that cannot run this shape here is left out (said in the decision)
                try:
                    sample = time_kernel(c, min(SCREEN_ROWS, timed), False)
                    sample()
                    samples[c] = sample
                except (RuntimeError, NotImplementedError) as err:
                    failed[c] = str(err).splitlines()[0] if str(err) else type(err).__name__
            screened = timings(samples, device, repeats=2)
            fastest = min(screened.values())
            kept = [c for c in screened if screened[c] <= SCREEN_FACTOR * fastest]
            seconds = timings({c: time_kernel(c, timed, True) for c in kept}, device)
            dropped = "".join(f"; {c} {screened[c] * 1e3:.2f} ms on {min(SCREEN_ROWS, timed)} rows" for c in screened
                              if c not in kept)  # fmt: skip
            kernel = (
                pick(seconds, candidates[0], PRODUCT_MARGIN)
                if candidates[0] in seconds
                else min(seconds, key=seconds.get)
            )
            left_out = "" if requested != "auto" or FUSED in candidates or "onednn" not in candidates else (
                f"; {FUSED} left out: its requantization does not give training's codes here"
            )  # fmt: skip
            _say(
                key + (requested, timed),
                f"integer Linear {in_features}->{out_features} on {_where(device)} ({requested}), {timed} rows: "
                f"{kernel} (measured: {_fmt(seconds)}{dropped}"
                f"{''.join(f'; {c} failed: {e}' for c, e in failed.items())}"
                f"{left_out})",
            )
        _int8_cache[key + (requested, timed)] = kernel
    return _int8_cache[key + (requested, timed)]


_int8_cache: Dict[tuple, str] = {}
