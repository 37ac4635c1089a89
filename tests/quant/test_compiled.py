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
