"""``torch.compile`` for the small elementwise functions of the quantized layers, with an eager fallback."""

from __future__ import annotations

import warnings
from typing import Callable, Dict

import torch

_compiled: Dict[Callable, Callable] = {}
_failed = False


def call(fn: Callable, args: tuple, compile: bool):
    """``fn(*args)``, through ``torch.compile`` if asked; falls back to eager (said once) if compiling fails.

    The functions passed here are pure tensor arithmetic, so the compiled and the eager result agree.
    """
    global _failed
    if not compile or _failed:
        return fn(*args)
    if fn not in _compiled:
        # One graph per signature (inputs, ReLU, fused, kernel, widths of 1): more than dynamo's default 8.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled[fn] = torch.compile(fn, dynamic=True)
    try:
        return _compiled[fn](*args)
    except Exception as err:  # a missing C++ compiler or an unsupported backend must not stop the model
        _failed = True
        warnings.warn(f"torch.compile of the quantized layers failed, running them eagerly: {err}", stacklevel=2)
        return fn(*args)
