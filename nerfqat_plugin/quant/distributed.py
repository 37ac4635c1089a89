"""Activation observers under data parallelism (several processes, each with its share of the batch).

In one process an observer folds each batch's range into its moving min/max at once. With several, each rank sees
only its own rays, so an observer keeps its batch range pending instead, and ``sync_observers`` (once per training
step, after the step) reduces the pending ranges of all quantizers across ranks in one collective (MIN of the
minima, MAX of the maxima, packed in one tensor) and folds the result in: every rank then holds the same ranges,
those a single process would have computed from the union of the ranks' batches. Within a step, ranks quantize
with the ranges of the steps before (an uninitialized observer with its own batch range, for that first step).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def data_parallel() -> bool:
    """Whether this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def sync_observers(module: nn.Module) -> int:
    """Reduce every pending observer range in ``module`` across ranks (one all-reduce) and fold it in; returns how
    many quantizers were synchronized. Every rank must call it at the same point (the same step)."""
    from nerfqat_plugin.quant.layers import ActQuantizer

    quantizers = [m for m in module.modules() if isinstance(m, ActQuantizer) and m.pending is not None]
    if not quantizers:
        return 0
    # MIN of the minima as MAX of their negatives: one MAX reduction for both ends
    packed = torch.stack([v for q in quantizers for v in (-q.pending[0], q.pending[1])])  # type: ignore[index]
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    for i, q in enumerate(quantizers):
        q.pending = None
        q.fold(-packed[2 * i], packed[2 * i + 1])
    return len(quantizers)
