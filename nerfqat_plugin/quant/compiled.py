"""``torch.compile`` for the small elementwise functions of the quantized layers, decided openly.

A function is compiled on its first call. If *compiling* fails (no C++ compiler, an unsupported backend), that
function runs eagerly from then on, said once with the reason; the functions are plain tensor arithmetic, so both
give the same result. An error raised while the compiled code *runs* (out of memory, a wrong shape) is the
caller's error and propagates: nothing is switched off behind the caller's back.

A compiled call runs with Python's trace function switched off in its thread. nerfstudio's viewer stops a render
it no longer needs by raising an exception from a trace function at the next Python line; raised inside dynamo
while it compiles, that exception comes out as an ``InternalTorchDynamoError`` the viewer does not expect, which
ends its render thread (the viewer then shows its last frame for good). Untraced, a compilation finishes once and
the render stops at the caller's next line instead.
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable, Dict, Union

import torch
from torch._dynamo.exc import BackendCompilerFailed

COMPILE_ERRORS = (BackendCompilerFailed,)
"""What a failed compilation raises (inductor's own errors derive from it); anything else propagates."""

Backend = Union[str, Callable]
BACKEND: Backend = "inductor"
"""The torch.compile backend (tests swap it to check the fallback)."""

_compiled: Dict[Callable, Callable] = {}
_eager: Dict[Callable, str] = {}


def call(fn: Callable, args: tuple, compile: bool):
    """``fn(*args)``, through ``torch.compile`` if asked and compiling ``fn`` has not failed before; plainly inside a
    function being compiled (the enclosing graph takes ``fn`` in)."""
    if not compile or fn in _eager or torch.compiler.is_compiling():
        return fn(*args)
    trace = sys.gettrace()
    if trace is None:
        return _compiled_call(fn, args)
    sys.settrace(None)  # see the module docstring
    try:
        return _compiled_call(fn, args)
    finally:
        sys.settrace(trace)


def _compiled_call(fn: Callable, args: tuple):
    compiled = _compiled.get(fn)
    if compiled is None:
        # One graph per signature (inputs, ReLU mode, kernel, widths of 1): more than dynamo's default 8.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        compiled = _compiled[fn] = torch.compile(fn, dynamic=True, backend=BACKEND)
    try:
        return compiled(*args)
    except COMPILE_ERRORS as err:
        cause = getattr(err, "inner_exception", None) or err
        reason = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
        _eager[fn] = reason
        warnings.warn(f"nerf-qat: torch.compile of {fn.__name__} failed, it runs eagerly: {reason}", stacklevel=3)
        return fn(*args)


def eager_functions() -> Dict[str, str]:
    """Functions that run eagerly because compiling them failed, with the reason (for reports and tests)."""
    return {fn.__name__: reason for fn, reason in _eager.items()}


def reset() -> None:
    """Forget compiled functions and failures (tests)."""
    _compiled.clear()
    _eager.clear()
