"""``torch.compile`` for the small elementwise functions of the quantized layers, decided openly.

A function is compiled on its first call. If *compiling* fails (no C++ compiler, an unsupported backend), that
function runs eagerly from then on, said once with the reason; the functions are plain tensor arithmetic, so both
give the same result. An error raised while the compiled code *runs* (out of memory, a wrong shape) is the
caller's error and propagates: nothing is switched off behind the caller's back.
"""

from __future__ import annotations

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
    """``fn(*args)``, through ``torch.compile`` if asked and compiling ``fn`` has not failed before."""
    if not compile or fn in _eager:
        return fn(*args)
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
        warnings.warn(f"nerf-qat: torch.compile of {fn.__name__} failed, it runs eagerly: {reason}", stacklevel=2)
        return fn(*args)


def eager_functions() -> Dict[str, str]:
    """Functions that run eagerly because compiling them failed, with the reason (for reports and tests)."""
    return {fn.__name__: reason for fn, reason in _eager.items()}


def reset() -> None:
    """Forget compiled functions and failures (tests)."""
    _compiled.clear()
    _eager.clear()
