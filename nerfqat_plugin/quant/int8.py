"""Integer inference: the trained fake-quantized layers, converted to integer codes and integer matmuls.

``convert_to_int(module)`` swaps every ``QuantLinear`` for an ``IntLinear`` and every ``ActQuantizer`` for an
``IntActQuantizer`` in place, so the module's own wiring (its ``forward``) runs unchanged on integers.

Activations travel as ``IntTensor``: codes in ``[0, 2**bits - 1]`` with their scale and zero point, as uint8 after
an integer product and as fp32 (exact integers) after a float product, so that a float product reads the codes a
float product wrote without a pass that converts them (a layer takes either). What a layer computes with
(``int8_kernel`` of the model config; ``dispatch.int8_kernel`` resolves it per layer and device):

- ``"int"``: an integer product of codes (``torch._int_mm``, oneDNN's int8 Linear, or oneDNN on 7-bit halves of the
  codes where the plain product would saturate; see ``kernels``), then, per input segment and in fp32, training's
  own scaling (``rounding.rescale``) and rounding (``rounding.activation_codes``). The accumulators equal the
  products of codes the fake-quantized layers formed, so the outputs are bit-identical. ``compile=True`` fuses
  that epilogue (unfused it costs more than the integer product saves).
- ``"float"``: as ``"int"``, with the products of codes formed in fp32 (exact below 2**24): any device.
- ``"onednn"``: oneDNN's int8 Linear with bias, ReLU and requantization fused into the matmul (``FUSED``), where its
  product is exact. ``rounding`` orders its float operations as oneDNN does, so it gives training's codes;
  ``fused_exact`` checks that on the machine before "auto" may choose it (a named "onednn" runs regardless).
- ``"auto"`` (the default): the fastest of all of these that are exact here, timed once per process, shape and
  bucket of rows (``dispatch.timing_rows``).

Where every layer of an MLP runs a float product or ``_int_mm`` (``one_graph``), the field compiles the whole MLP
as one graph when it renders on a CPU: one call per tile of samples instead of one per layer, and each layer's
epilogue fused with the next layer's input.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from nerfqat_plugin.quant.compiled import call
from nerfqat_plugin.quant.dispatch import FUSED, Kernel, int8_kernel, onednn_exact
from nerfqat_plugin.quant.kernels import (
    int_mm,
    mm_fp32_out,
    onednn_linear,
    onednn_linear_sum,
    onednn_prepack,
    onednn_product,
    onednn_split_product,
)
from nerfqat_plugin.quant.layers import ActQuantizer, QuantLinear
from nerfqat_plugin.quant.rounding import (
    ReLU,
    activation_codes,
    activation_qparams,
    rescale,
    round_up_to_bf16,
    weight_codes,
    weight_scale,
)

_SHIFT = 128
"""``torch._int_mm`` takes int8: uint8 codes shifted down by this."""


FLOAT_PRODUCTS = ("fp32", "bf16")
"""The products whose inputs and outputs travel as fp32 codes."""
ONE_GRAPH_KERNELS = FLOAT_PRODUCTS + ("int_mm",)
"""The kernels a compiled graph can hold several layers of (oneDNN's need their prepacked weights as constants)."""


class IntTensor(NamedTuple):
    """An activation: codes (uint8, or fp32 holding the same integers) with its scale and zero point (0-d)."""

    codes: Tensor
    scale: Tensor
    zero_point: Tensor

    def dequantize(self) -> Tensor:
        return (self.codes.float() - self.zero_point) * self.scale

    def as_uint8(self) -> "IntTensor":
        """The same activation with uint8 codes."""
        if self.codes.dtype == torch.uint8:
            return self
        return IntTensor(self.codes.to(torch.uint8), self.scale, self.zero_point)


def _requantize(y: Tensor, scale: Tensor, zero_point: Tensor, qmax: int, relu: ReLU, as_float: bool = False) -> Tensor:
    """Float to codes with training's rounding: uint8, or fp32 with ``as_float``."""
    codes = activation_codes(y, scale, zero_point, qmax, relu)
    return codes if as_float else codes.to(torch.uint8)


class IntActQuantizer(nn.Module):
    """Quantizes a float input (an encoding) to an ``IntTensor`` with frozen ``scale`` and ``zero_point``."""

    def __init__(self, scale: Tensor, zero_point: Tensor, qmax: int, compile: bool = False) -> None:
        super().__init__()
        self.qmax = qmax
        self.compile = compile
        self.register_buffer("scale", scale.detach().float().reshape(()).clone())
        self.register_buffer("zero_point", zero_point.detach().float().reshape(()).clone())

    def forward(self, x: Tensor) -> IntTensor:
        codes = call(_requantize, (x, self.scale, self.zero_point, self.qmax, None), self.compile)
        return IntTensor(codes, self.scale, self.zero_point)


def _accumulate(
    inputs: Sequence[Tuple[Tensor, Tensor, Tensor]], weights: Sequence[Tensor], row_sums: Sequence[Tensor], product: str
) -> List[Tensor]:
    """``(codes - zero_point) @ w`` of each input as fp32, with ``product`` "int_mm" or "fp32"; ``weights[i]`` is the
    ``[in_i, out]`` slice of the weight codes for input ``i`` (int8, or fp32 for the fp32 product) and
    ``row_sums[i]`` its sums over ``in_i``."""
    accs = []
    for (codes, _, zero_point), w, rows in zip(inputs, weights, row_sums, strict=True):
        if product == "int_mm":
            shifted = (codes.to(torch.int16) - _SHIFT).to(torch.int8)
            # (codes - 128) @ w + (128 - zero_point) * rowsum(w) = (codes - zero_point) @ w, in int32
            acc = int_mm(shifted, w) + (_SHIFT - zero_point).to(torch.int32) * rows
            accs.append(acc.float())
        else:
            # codes @ w - zero_point * rowsum(w): the product reads the codes as they are (integers below 2**24)
            accs.append(codes.float() @ w - zero_point * rows)
    return accs


def _int_linear(
    inputs: Sequence[Tuple[Tensor, Tensor, Tensor]],
    weights: Sequence[Tensor],
    row_sums: Sequence[Tensor],
    accs: Optional[Sequence[Tensor]],
    weight_scale: Tensor,
    bias: Tensor,
    out_scale: Optional[Tensor],
    out_zero_point: Optional[Tensor],
    qmax: int,
    relu: ReLU,
    product: str,
) -> Tensor:
    """Integer Linear on ``(codes, scale, zero_point)`` inputs; uint8 output codes, or fp32 without ``out_scale``.

    ``accs``: the accumulators of each input, formed outside (oneDNN, bf16), or None to form them here
    (``_accumulate`` with ``product``).
    """
    if accs is None:
        accs = _accumulate(inputs, weights, row_sums, product)
    y = rescale(accs, [scale for _, scale, _ in inputs], weight_scale, bias)
    if out_scale is None or out_zero_point is None:
        return y
    return _requantize(y, out_scale, out_zero_point, qmax, relu, product in FLOAT_PRODUCTS)


class IntLinear(nn.Module):
    """Integer counterpart of ``QuantLinear``: int8 weight codes, per-channel scale, fp32 bias."""

    def __init__(
        self,
        weight_codes: Tensor,
        weight_scale: Tensor,
        bias: Tensor,
        in_splits: Sequence[int],
        relu: ReLU,
        out_qparams: Optional[Tuple[Tensor, Tensor]],
        act_qmax: int,
        weight_qmax: int,
        kernel: Kernel = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.in_splits = tuple(in_splits)
        self.relu: ReLU = relu
        self.act_qmax, self.weight_qmax = act_qmax, weight_qmax
        self.kernel: Kernel = kernel
        self.compile = compile
        self.register_buffer("weight_codes", weight_codes.detach().to(torch.int8).clone())
        self.register_buffer("weight_scale", weight_scale.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())
        if out_qparams is None:
            self.out_scale = self.out_zero_point = None
        else:
            self.register_buffer("out_scale", out_qparams[0].detach().float().reshape(()).clone())
            self.register_buffer("out_zero_point", out_qparams[1].detach().float().reshape(()).clone())
        self._prepare()

    def _prepare(self) -> None:
        """Per-segment weight layouts for the kernels (derived from ``weight_codes``, not saved)."""
        segments = self.weight_codes.split(self.in_splits, dim=1)
        self._weights = [s.t().contiguous() for s in segments]
        self._row_sums = [s.to(torch.int32).sum(dim=1, dtype=torch.int32) for s in segments]
        # the float products' operands, exact in fp32
        self._float_weights = [w.float() for w in self._weights]
        self._float_row_sums = [r.float() for r in self._row_sums]
        self._packed_weights: Dict[bool, list] = {}
        self._graph_kernel = ""

    def _apply(self, fn, recurse=True):  # keep the derived tensors on the module's device
        super()._apply(fn, recurse)
        self._prepare()
        return self

    def resolved_kernel(self, device: torch.device, rows: Optional[int] = None) -> str:
        """What this layer runs on ``device`` for inputs of ``rows`` rows (None: the largest timing bucket): a
        product of ``kernels`` then training's epilogue, or the fused oneDNN kernel (see ``dispatch.int8_kernel``)."""
        n = self.weight_codes.shape[0]
        return int8_kernel(
            device, max(self.in_splits), n, self.act_qmax, self.weight_qmax, self.kernel, self._sample, rows,
            lambda: fused_exact(self.act_qmax, self.weight_qmax),
        )  # fmt: skip

    def _sample(self, kernel: str, rows: int, compiled: bool) -> Callable[[], object]:
        """For timing ``kernel``: the whole layer as it runs with it (products, epilogue compiled if ``compiled`` and
        the layer compiles, codes in the type the kernel reads), on a random batch of ``rows`` rows."""
        device = self.weight_codes.device
        g = torch.Generator().manual_seed(0)
        dtype = torch.float32 if kernel in FLOAT_PRODUCTS else torch.uint8
        inputs = [
            IntTensor(
                torch.randint(0, self.act_qmax + 1, (rows, w), generator=g, dtype=torch.uint8).to(device, dtype),
                torch.tensor(0.01, device=device),
                torch.tensor(3.0, device=device),
            )
            for w in self.in_splits
        ]
        return lambda: self._run(kernel, inputs, compiled and self.compile)

    def forward(self, *inputs: IntTensor):
        # traced into one graph (``one_graph``): the kernel it resolved beforehand
        lead = inputs[0].codes.shape[:-1]
        if torch.compiler.is_compiling():
            kernel = self._graph_kernel
        else:
            kernel = self.resolved_kernel(self.weight_codes.device, inputs[0].codes[..., 0].numel())
        flat = [IntTensor(x.codes.reshape(-1, x.codes.shape[-1]), x.scale, x.zero_point) for x in inputs]
        if kernel not in FLOAT_PRODUCTS:  # integer kernels take uint8 codes (float products take either)
            flat = [x.as_uint8() for x in flat]
        y = self._run(kernel, flat, self.compile)
        y = y.reshape(*lead, y.shape[-1])
        if self.out_scale is None:
            return y
        return IntTensor(y, self.out_scale, self.out_zero_point)

    def _accumulators(self, kernel: str, inputs: List[IntTensor]) -> Optional[List[Tensor]]:
        """The accumulators of the products formed outside the compiled epilogue (oneDNN, bf16), else None."""
        n = self.weight_codes.shape[0]
        if kernel == "onednn":
            packed = self._packed()
            return [onednn_product(x.codes, int(x.zero_point), p, n) for x, p in zip(inputs, packed, strict=True)]
        if kernel == "onednn_split":
            segments = zip(inputs, self._packed(split=True), self._row_sums, strict=True)
            return [onednn_split_product(x.codes, int(x.zero_point), p, rows, self.compile) for x, p, rows in segments]
        if kernel == "bf16":
            return [mm_fp32_out(x.codes.float() - x.zero_point, w) for x, w in zip(inputs, self._weights, strict=True)]
        return None

    def _operands(self, kernel: str) -> Tuple[List[Tensor], List[Tensor]]:
        """Weight codes ``[in_i, out]`` and their row sums per input segment, as ``kernel``'s product takes them."""
        if kernel in FLOAT_PRODUCTS:
            return self._float_weights, self._float_row_sums
        return self._weights, self._row_sums

    def _run(self, kernel: str, inputs: List[IntTensor], compile: bool) -> Tensor:
        if kernel == FUSED:
            return self._onednn_fused(inputs, compile)
        args = (
            [tuple(x) for x in inputs],
            *self._operands(kernel),
            self._accumulators(kernel, inputs),
            self.weight_scale,
            self.bias,
            self.out_scale,
            self.out_zero_point,
            self.act_qmax,
            self.relu,
            kernel,
        )
        return call(_int_linear, args, compile)

    def _packed(self, split: bool = False) -> list:
        """oneDNN's prepacked weights (``kernels.onednn_prepack``), one per input segment (made on first use)."""
        if split not in self._packed_weights:
            segments = self.weight_codes.split(self.in_splits, dim=1)
            self._packed_weights[split] = [onednn_prepack(s, split) for s in segments]
        return self._packed_weights[split]

    def _onednn_fused(self, inputs: List[IntTensor], compile: bool) -> Tensor:
        """oneDNN int8 Linear; several inputs: all but the last to fp32, summed into the last one's epilogue.

        Each input's scale goes in folded into the weight scales (``x.scale * weight_scale``, as ``rounding.rescale``
        forms it) with a unit input scale: oneDNN then scales the accumulator as training does whatever order its
        kernel applies the two scales in (an AVX2 oneDNN multiplies by their product, an AVX-512 one by the input's
        scale, then the weight's)."""
        post_op = "relu" if self.relu == "fused" else "none"
        packed_segments = self._packed()
        partial = None
        for x, packed in zip(inputs[:-1], packed_segments[:-1], strict=True):
            y = onednn_linear(x.codes, 1.0, int(x.zero_point), packed, x.scale * self.weight_scale)
            partial = y if partial is None else partial + y
        x, packed = inputs[-1], packed_segments[-1]
        if self.out_scale is None or self.out_zero_point is None:
            if partial is None:
                return onednn_linear(x.codes, 1.0, int(x.zero_point), packed, x.scale * self.weight_scale, self.bias)
            return onednn_linear_sum(
                x.codes, 1.0, int(x.zero_point), packed, x.scale * self.weight_scale, partial, self.bias, "none"
            )
        if partial is not None:
            # oneDNN sums only into an output of the same dtype: finish in fp32, then requantize with our rounding.
            y = onednn_linear_sum(
                x.codes, 1.0, int(x.zero_point), packed, x.scale * self.weight_scale, partial, self.bias, post_op
            )
            return call(_requantize, (y, self.out_scale, self.out_zero_point, self.act_qmax, self.relu), compile)
        out_zp = int(self.out_zero_point)
        y = onednn_linear(
            x.codes, 1.0, int(x.zero_point), packed, x.scale * self.weight_scale, self.bias,
            float(self.out_scale), out_zp, torch.uint8, post_op,
        )  # fmt: skip
        if self.act_qmax < 255:  # oneDNN saturates at 255
            y = y.clamp_max(self.act_qmax)
        if self.relu == "unfused":
            y = y.clamp_min(out_zp)
        return y


def int_linear_from(layer: QuantLinear, kernel: Kernel = "auto", compile: bool = False) -> IntLinear:
    """The ``IntLinear`` that computes what ``layer`` computes with fake quantization on (frozen observers)."""
    tensors = layer_tensors(layer)
    return IntLinear(
        tensors["weight_codes"],
        tensors["weight_scale"],
        tensors["bias"],
        layer.in_splits,
        layer.relu,
        (tensors["out_scale"], tensors["out_zero_point"]) if layer.out_quant is not None else None,
        layer.act_qmax,
        layer.weight_qmax,
        kernel,
        compile,
    )


@torch.no_grad()
def layer_tensors(layer: QuantLinear) -> Dict[str, Tensor]:
    """The integers and scales that define a trained ``QuantLinear``."""
    scale = weight_scale(layer.weight, layer.weight_qmax)
    out = {
        "weight_codes": weight_codes(layer.weight, scale, layer.weight_qmax).to(torch.int8),
        "weight_scale": scale,
        "bias": layer.bias.detach().float(),
    }
    if layer.out_quant is not None:
        out["out_scale"], out["out_zero_point"] = layer.out_quant.qparams()
    return out


def convert_to_int(module: nn.Module, kernel: Kernel = "auto", compile: bool = False) -> nn.Module:
    """Replace, in place, each ``QuantLinear``/``ActQuantizer`` inside ``module`` by its integer counterpart."""
    for name, child in list(module.named_children()):
        if isinstance(child, QuantLinear):
            setattr(module, name, int_linear_from(child, kernel, compile))
        elif isinstance(child, ActQuantizer):
            setattr(module, name, IntActQuantizer(*child.qparams(), child.qmax, compile))
        else:
            convert_to_int(child, kernel, compile)
    return module


def one_graph(module: nn.Module, device: torch.device, rows: Optional[int] = None) -> bool:
    """Whether the integer layers inside ``module`` may be compiled as one graph on ``device`` for inputs of
    ``rows`` rows (fewer calls, and inductor fuses each layer's epilogue with the next layer's input): all of them
    compiled, each running a kernel of ``ONE_GRAPH_KERNELS``. Resolves every layer's kernel first (timing it on first
    use), for the trace."""
    layers = [m for m in module.modules() if isinstance(m, IntLinear)]
    if not layers or not all(m.compile for m in layers):
        return False
    for m in layers:
        m._graph_kernel = m.resolved_kernel(device, rows)
    return all(m._graph_kernel in ONE_GRAPH_KERNELS for m in layers)


def set_kernel(module: nn.Module, kernel: Kernel, compile: bool) -> None:
    """Choose the kernel and compilation for every integer layer inside ``module``."""
    for m in module.modules():
        if isinstance(m, IntLinear):
            m.kernel, m.compile = kernel, compile
        elif isinstance(m, IntActQuantizer):
            m.compile = compile


FUSED_CHECK_LAYERS: Tuple[Tuple[ReLU, Tuple[int, ...], bool], ...] = (
    ("fused", (64,), True),
    ("fused", (64, 27), True),
    ("unfused", (64,), True),
    ("unfused", (64, 27), True),
    (None, (64,), True),
    (None, (64,), False),
    (None, (64, 27), False),
)
"""(ReLU, input widths, quantized output) of the layers ``fused_exact`` checks: every kind the NeRF MLPs have."""


def _other_roundings(y: Tensor, scale: Tensor, zero_point: Tensor) -> List[Tensor]:
    """Codes of ``y`` under the orders of operations a requantization might take instead of ``rounding.grid``'s:
    divide by the scale, add the zero point after rounding, or multiply and add in one rounding (as an FMA)."""
    r = 1.0 / scale
    exact = (y.double() * r.double() + zero_point.double()).round().float()
    return [
        (y / scale).round() + zero_point,
        (y * r).round() + zero_point,
        (y / scale + zero_point).round(),
        exact,
    ]


def _hard_rows(layer: "IntLinear", inputs: List[IntTensor], keep: int = 256) -> List[IntTensor]:
    """The rows of ``inputs`` whose output codes depend on the requantization's order of operations (see
    ``_other_roundings``), plus ``keep`` others: where a kernel that orders them otherwise shows."""
    assert layer.out_scale is not None and layer.out_zero_point is not None
    y = _float_output(layer, inputs)
    expected = activation_codes(y, layer.out_scale, layer.out_zero_point, layer.act_qmax, layer.relu)
    v = torch.relu(y) if layer.relu == "fused" else y
    differs = torch.zeros(y.shape[0], dtype=torch.bool)
    for codes in _other_roundings(v, layer.out_scale, layer.out_zero_point):
        codes = codes.clamp(0, layer.act_qmax)
        if layer.relu == "unfused":
            codes = torch.maximum(codes, layer.out_zero_point)
        differs |= (codes != expected).any(dim=1)
    differs[:keep] = True
    return [IntTensor(x.codes[differs], x.scale, x.zero_point) for x in inputs]


def _float_output(layer: "IntLinear", inputs: List[IntTensor]) -> Tensor:
    """The layer's float output before its requantization (training's arithmetic)."""
    accs = _accumulate([tuple(x) for x in inputs], layer._float_weights, layer._float_row_sums, "fp32")
    return rescale(accs, [x.scale for x in inputs], layer.weight_scale, layer.bias)


@lru_cache(maxsize=None)
def fused_exact(act_qmax: int, weight_qmax: int, rows: int = 4096, search_rows: int = 1 << 17) -> bool:
    """Whether oneDNN's fused kernel gives the codes (and float outputs) of training's arithmetic on this machine,
    for codes in ``[0, act_qmax]`` and weights in ``[-weight_qmax, weight_qmax]``.

    Checked once per process and pair of ranges, in a fraction of a second, on random layers of every kind in
    ``FUSED_CHECK_LAYERS`` (``rows`` rows each; output ranges from the layer's own outputs, as an observer sets
    them). A requantization that orders its operations otherwise than ``rounding.grid`` differs on only about one
    code in 10^6, so the quantized layers run only the rows whose codes would differ under another order
    (``_hard_rows``), the one with a signed output (zero point > 0) found among ``search_rows`` random rows.
    False where oneDNN's product itself is inexact (``dispatch.onednn_exact``)."""
    if not onednn_exact(act_qmax, weight_qmax):
        return False
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for relu, splits, quantized in FUSED_CHECK_LAYERS:
            n, k = 64, sum(splits)
            codes = torch.randint(-weight_qmax, weight_qmax + 1, (n, k), generator=g).float()
            w_scale = round_up_to_bf16(torch.rand(n, generator=g) * 1e-2 + 1e-3)
            bias = torch.randn(n, generator=g) * 0.1
            count = search_rows if quantized and relu is None else rows  # a signed output: zero point > 0
            inputs = [
                IntTensor(
                    torch.randint(0, act_qmax + 1, (count, width), generator=g, dtype=torch.uint8),
                    torch.rand((), generator=g) * 0.02 + 1e-3,
                    torch.randint(0, act_qmax // 2, (), generator=g).float(),
                )
                for width in splits
            ]
            layer = IntLinear(codes, w_scale, bias, splits, relu, None, act_qmax, weight_qmax, "float")
            if quantized:
                y = _float_output(layer, inputs)
                lo, hi = y.min(), y.max()
                qparams = activation_qparams(torch.relu(lo) if relu == "fused" else lo, hi, act_qmax)
                layer = IntLinear(codes, w_scale, bias, splits, relu, qparams, act_qmax, weight_qmax, "float")
                inputs = _hard_rows(layer, inputs)
            expected = layer._run("fp32", inputs, False)
            if not torch.equal(layer._run(FUSED, inputs, False).float(), expected.float()):
                return False
    return True
