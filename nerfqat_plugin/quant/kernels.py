"""Products of codes: every way this package multiplies activation codes by weight codes, each exact where used.

Products (names used by ``dispatch`` and in its log):

- ``fp32``: fp32 operands; exact for codes while sums stay below 2**24. Any device.
- ``bf16``: bf16 operands (which hold integers up to 256 exactly) with an fp32 result. CUDA.
- ``int_mm``: ``torch._int_mm``, int8 x int8 into int32 (codes shifted by 128, then corrected). Exact. CPU, and
  CUDA's integer tensor cores (shapes padded to what it needs).
- ``onednn``: oneDNN's int8 Linear (``torch.ops.onednn.qlinear_pointwise``), uint8 x int8 into int32. CPU. On x86
  CPUs without VNNI it adds pairs of products into a saturating int16 (``vpmaddubsw``), so 8-bit activations times
  8-bit weights overflow there: ``dispatch.onednn_exact`` checks the machine before it is chosen.
- ``onednn_split``: the same kernel once, at twice the depth: the low 7 bits of the activation codes and their top
  bit (as 0 or 128) side by side, against the weight codes twice (``codes = lo + top``). Every pair then stays
  within 2 * 128 * 127 < 32767, exact without VNNI.

oneDNN can also scale, add the bias, apply the ReLU and requantize inside the same call (``onednn_linear``), which
the integer export's fused kernel uses. Training's gradient products take bf16 or fp32 operands.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Optional

import torch
from torch import Tensor

from nerfqat_plugin.quant.compiled import call

Product = Literal["fp32", "bf16", "int_mm", "onednn", "onednn_split"]


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's int8 Linear."""
    return hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qlinear_pointwise")


def onednn_prepack(w_codes: Tensor, split: bool = False):
    """oneDNN's packed layout of int8 weight codes ``[out, in]``; with ``split``, of ``[w_codes, w_codes]`` side by
    side (``[out, 2 * in]``), the weights of ``onednn_split_product``."""
    w = w_codes.to(torch.int8)
    if split:
        w = torch.cat([w, w], dim=1)
    return torch.ops.onednn.qlinear_prepack(w.contiguous(), None)


def onednn_linear(
    codes: Tensor,
    scale: float,
    zero_point: int,
    packed,
    w_scale: Tensor,
    bias: Optional[Tensor] = None,
    out_scale: float = 1.0,
    out_zero_point: int = 0,
    out_dtype: torch.dtype = torch.float32,
    post_op: str = "none",
) -> Tensor:
    """``requantize(relu?((codes - zero_point) * scale @ (w_codes * w_scale).T + bias))`` in one oneDNN call.

    ``codes``: uint8 ``[rows, in]``. With ``out_dtype`` uint8 the output is requantized with ``out_scale`` and
    ``out_zero_point`` (oneDNN's rounding); fp32 gives the float output. ``post_op``: "none" or "relu".
    """
    w_zero = torch.zeros(w_scale.shape[0], dtype=torch.long)
    return torch.ops.onednn.qlinear_pointwise(
        codes, float(scale), int(zero_point), packed, w_scale, w_zero, bias, float(out_scale), int(out_zero_point),
        out_dtype, post_op, [None], "",
    )  # fmt: skip


def onednn_linear_sum(
    codes: Tensor, scale: float, zero_point: int, packed, w_scale: Tensor, partial: Tensor, bias: Tensor, post_op: str
) -> Tensor:
    """``onednn_linear`` to fp32 with ``partial`` (fp32, same shape) added before the bias and ``post_op``."""
    w_zero = torch.zeros(w_scale.shape[0], dtype=torch.long)
    return torch.ops.onednn.qlinear_pointwise.binary(
        codes, float(scale), int(zero_point), packed, w_scale, w_zero, partial, bias, 1.0, 0, torch.float32,
        1.0, 0, "sum", 1.0, post_op, [None], "",
    )  # fmt: skip


def onednn_product(codes: Tensor, zero_point: int, packed, out_features: int) -> Tensor:
    """``(codes - zero_point) @ w_codes.T`` as fp32: uint8 ``codes``, packed int8 weight codes, unit scales."""
    return onednn_linear(codes, 1.0, zero_point, packed, torch.ones(out_features))


def _halves(codes: Tensor) -> Tensor:
    return torch.cat([codes & 127, codes & 128], dim=-1)


def onednn_split_product(
    codes: Tensor, zero_point: int, packed_split, row_sums: Tensor, compile: bool = False
) -> Tensor:
    """``onednn_product`` without VNNI: one oneDNN product of depth ``2 * in``, the low 7 bits of the codes and their
    top bit (0 or 128) side by side, against ``onednn_prepack(w_codes, split=True)``.

    Every pair of products oneDNN adds in int16 stays within ``2 * 128 * 127 < 32767``. The zero point enters as
    the bias ``-zero_point * row_sums`` (``row_sums``: each output's sum of weight codes): ``(codes - zp) @ w.T =
    codes @ w.T - zp * row_sums``, integers below 2**24, so exact in fp32."""
    both = call(_halves, (codes,), compile)
    bias = row_sums.float() * -float(zero_point)
    return onednn_linear(both, 1.0, 0, packed_split, torch.ones(row_sums.shape[0]), bias)


@lru_cache(maxsize=None)
def mm_fp32_out_supported(device_type: str) -> bool:
    """Whether ``mm_fp32_out`` runs on this kind of device: tried once, on CUDA only (CPU has no fp32-out bf16 mm)."""
    if device_type != "cuda":
        return False
    a = torch.ones(16, 16, device=device_type, dtype=torch.bfloat16)
    try:
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def mm_fp32_out(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` with bf16 operands, accumulated and returned in fp32 (where ``mm_fp32_out_supported``)."""
    return torch.mm(a.to(torch.bfloat16), b.to(torch.bfloat16), out_dtype=torch.float32)


def int_mm(a: Tensor, b: Tensor, pad: Optional[bool] = None) -> Tensor:
    """``torch._int_mm(a, b)`` (int8 ``[m, k]`` x int8 ``[k, n]`` -> int32 ``[m, n]``) for any shapes. CUDA needs
    m > 16 and k, n multiples of 8: there (or with ``pad``) zeros are padded on, which add nothing, and cut off."""
    if not (a.device.type == "cuda" if pad is None else pad):
        return torch._int_mm(a, b)
    m, k = a.shape
    n = b.shape[1]
    pad_k, pad_n, pad_m = (-k) % 8, (-n) % 8, max(0, 17 - m)
    if pad_k or pad_m:
        a = torch.nn.functional.pad(a, (0, pad_k, 0, pad_m))
    if pad_k or pad_n:
        b = torch.nn.functional.pad(b, (0, pad_n, 0, pad_k))
    return torch._int_mm(a, b)[:m, :n]


def _to_uint8(centered: Tensor, zero_point: Tensor) -> Tensor:
    return (centered.float() + zero_point).to(torch.uint8)


def codes_product(centered: Tensor, zero_point: Tensor, w_codes: Tensor, product: Product, compile: bool) -> Tensor:
    """``centered @ w_codes.T`` in fp32 (training: float codes, weight codes formed this step), exact on every path
    (``product``: fp32, bf16, onednn or onednn_split).

    ``centered``: centered activation codes ``[rows, in]`` (fp32 or bf16); ``w_codes``: ``[out, in]`` integer-valued.
    """
    if product in ("onednn", "onednn_split"):
        codes = call(_to_uint8, (centered, zero_point), compile)
        if product == "onednn":
            return onednn_product(codes, int(zero_point), onednn_prepack(w_codes), w_codes.shape[0])
        packed = onednn_prepack(w_codes, split=True)
        return onednn_split_product(codes, int(zero_point), packed, w_codes.sum(dim=1), compile)
    if product == "bf16":
        return mm_fp32_out(centered, w_codes.T)
    return centered.float() @ w_codes.T


def grad_product(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """``a @ b`` for gradients with ``dtype`` operands; bf16 returns fp32 where the device accumulates into it."""
    if dtype == torch.float32:
        return a.float() @ b.float()
    if mm_fp32_out_supported(a.device.type):
        return mm_fp32_out(a, b)
    return a.to(dtype) @ b.to(dtype)
