"""Compilation is decided openly: a failed compilation falls back to eager for that function, said once; an error
raised by the compiled code itself propagates."""

import pytest
import torch

from nerfqat_plugin.quant import compiled


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    compiled.reset()
    yield
    compiled.reset()


def _double_plus_one(x):
    return x * 2 + 1


def _add(x, y):
    return x + y


def test_failed_compilation_runs_that_function_eagerly_and_says_why(monkeypatch):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler (simulated)")

    monkeypatch.setattr(compiled, "BACKEND", broken_backend)
    x = torch.arange(4.0)
    with pytest.warns(UserWarning, match="_double_plus_one failed, it runs eagerly: .*simulated"):
        assert torch.equal(compiled.call(_double_plus_one, (x,), True), x * 2 + 1)
    assert "simulated" in compiled.eager_functions()["_double_plus_one"]
    assert torch.equal(compiled.call(_double_plus_one, (x,), True), x * 2 + 1)  # eager now, no second warning


def test_error_raised_by_compiled_code_propagates_and_switches_nothing_off():
    with pytest.raises(RuntimeError, match="size"):
        compiled.call(_add, (torch.ones(3), torch.ones(4)), True)
    assert compiled.eager_functions() == {}
    assert torch.equal(compiled.call(_add, (torch.ones(3), torch.ones(3)), True), torch.full((3,), 2.0))


def _compiled_cases():
    """Every function the quantized layers pass to ``compiled.call``, with arguments like the layers'."""
    from nerfqat_plugin.quant import int8, kernels, ops

    x, scale, zp = torch.randn(64, 16), torch.tensor(0.05), torch.tensor(3.0)
    codes = torch.randint(0, 256, (64, 16), dtype=torch.uint8)
    w = torch.randint(-127, 128, (16, 8), dtype=torch.int8)
    inputs = [(codes, scale, zp)]
    weights, rows = [w], [w.to(torch.int32).sum(0)]
    return {
        "centered": (ops._centered, (x, scale, zp, 255, "fused", torch.bfloat16)),
        "centered_grad": (ops._centered_grad, (x, x, scale, zp, 255, "unfused", torch.float32)),
        "rescale_and_range": (ops._rescale_and_range, ([x[:, :8], x[:, 8:]], [scale, scale], scale, x[0, :8], "fused")),
        "to_uint8": (kernels._to_uint8, (x.round(), zp)),
        "halves": (kernels._halves, (codes,)),
        "requantize": (int8._requantize, (x, scale, zp, 255, None)),
        "int_linear_int_mm": (
            int8._int_linear,
            (inputs, weights, rows, None, scale.expand(8), x[0, :8], scale, zp, 255, "fused", "int_mm"),
        ),  # fmt: skip
        "int_linear_accs": (
            int8._int_linear,
            (inputs, weights, rows, [x[:, :8]], scale.expand(8), x[0, :8], None, None, 255, None, "onednn"),
        ),  # fmt: skip
    }


@pytest.mark.parametrize("name", list(_compiled_cases()))
def test_compiled_functions_have_no_graph_breaks(name):
    """One graph per function: what inductor fuses is the whole function (also what CUDA graphs would need)."""
    fn, args = _compiled_cases()[name]
    explanation = torch._dynamo.explain(fn)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_a_render_stopped_by_the_viewer_never_stops_inside_a_compilation():
    """nerfstudio's viewer stops a render by raising from a trace function at a Python line (``SetTrace``). Raised
    inside dynamo's compilation (thousands of Python lines) it became an InternalTorchDynamoError that killed the
    viewer's render thread; the compiled call now runs untraced and completes, and the trace function is back
    afterwards, so the render stops at the caller's next lines."""
    from nerfstudio.viewer_legacy.server.viewer_utils import IOChangeException, SetTrace

    limit = 500
    lines = []

    def stop_after_the_limit(frame, event, arg):
        if event == "line":
            lines.append(frame.f_code.co_filename)
            if len(lines) >= limit:
                raise IOChangeException
        return stop_after_the_limit

    def more_python_lines():
        for _ in range(limit):
            pass

    x = torch.arange(6.0)
    with SetTrace(stop_after_the_limit):
        y = compiled.call(_double_plus_one, (x,), True)
        traced_during_the_call = len(lines)
        with pytest.raises(IOChangeException):
            more_python_lines()
    assert torch.equal(y, x * 2 + 1)
    assert compiled.eager_functions() == {}
    assert traced_during_the_call < limit
