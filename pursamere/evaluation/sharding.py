"""Sharding an evaluation over the ranks of a ``torchrun`` process group (nccl on CUDA, gloo on CPU).

The evaluation loop (:func:`pursamere.evaluation.runner.evaluate`) hands every batch-wise piece
of work — clean predictions, one attack on a set of images — to :func:`map_batches`. Without a
process group that simply calls the function. Under ``torchrun`` the images are cut into exactly
the batches one process would use, whole batches go to the ranks, and the answers are gathered, so
every rank holds the same full flags and end points and a sharded run writes the rows of a
single-process run. Cascades and warm starts therefore work unchanged::

    torchrun --nproc_per_node 4 -m pursamere ensemble --preset digits --out results/digits/ens
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Optional

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "shutdown", "shard_indices", "collective", "broadcast_from_rank0",
           "map_batches"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``; ``owns_group``: we must destroy it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def active(self) -> bool:
        """A process group with more than one rank is in use (collectives are needed)."""
        return self.world_size > 1


def init_distributed(device: Optional[str] = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``…).

    Backend nccl when the device is CUDA, gloo otherwise. Not launched by torchrun (no
    ``WORLD_SIZE``): a single-process context, no group. A group that already exists is used as
    it is and left for its owner to destroy.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available). Under CUDA every rank
            takes GPU ``LOCAL_RANK``.
        timeout_s: how long a collective waits for a missing rank before failing.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)  # all_gather_object on nccl stages its bytes on the current device
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group=False)
    if "WORLD_SIZE" not in os.environ:
        return DistContext(device=dev)
    kwargs = {"device_id": dev} if use_cuda else {}
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://",
                            timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group=True)


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _gather_all(ctx: DistContext, obj) -> list:
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_from_rank0(ctx: Optional[DistContext], obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself without a group)."""
    if ctx is None or not ctx.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def collective(ctx: Optional[DistContext], what: str, fn: Callable) -> list:
    """Run ``fn()`` on every rank and gather the answers in rank order; if ANY rank failed, ALL raise.

    Without this a rank that hits an error leaves the others blocked in the next collective
    until the timeout.
    """
    if ctx is None or not ctx.active:
        return [fn()]
    try:
        mine = ("ok", fn())
    except Exception as err:  # reported to every rank below, then re-raised
        mine = ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
    answers = _gather_all(ctx, mine)
    bad = [(r, a[1]) for r, a in enumerate(answers) if a[0] != "ok"]
    if bad:
        r, msg = bad[0]
        raise RuntimeError(f"{what} failed on rank {r} of {ctx.world_size}:\n{msg}")
    return [a[1] for a in answers]


def shard_indices(n: int, rank: int, world: int) -> range:
    """The contiguous slice of ``0..n-1`` that ``rank`` of ``world`` owns.

    Balanced: the first ``n % world`` ranks get one more. The slices are disjoint, in order, and
    cover ``0..n-1`` exactly once (a rank may get none when ``n < world``).

    Example:
        >>> [list(shard_indices(5, r, 2)) for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an integer >= 1, got {world!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be an integer in [0, {world}), got {rank!r}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def own_batches(idx: torch.Tensor, batch_size: int, ctx: DistContext) -> torch.Tensor:
    """This rank's share of ``idx`` when it is cut into batches of ``batch_size``: whole batches only."""
    n_batches = -(-len(idx) // batch_size)
    mine = shard_indices(n_batches, ctx.rank, ctx.world_size)
    return idx[mine.start * batch_size: mine.stop * batch_size]


def map_batches(ctx: Optional[DistContext], what: str, idx: torch.Tensor, batch_size: int,
                fn: Callable[[torch.Tensor], tuple]) -> tuple:
    """Apply ``fn(own_idx) -> (outputs...)`` to ``idx`` — whole, or split by whole batches over the ranks.

    ``fn`` returns a tuple of tensors (or ``None``) whose first dimension follows ``own_idx``; the
    answer has the same tuple with the first dimension following ``idx``, on every rank.
    """
    if ctx is None or not ctx.active or len(idx) == 0:
        return fn(idx)
    idx = idx.cpu()
    own = own_batches(idx, batch_size, ctx)

    def run():
        out = fn(own) if len(own) else None
        return own.tolist(), None if out is None else tuple(None if o is None else o.detach().cpu() for o in out)

    parts = collective(ctx, what, run)
    pos = {int(i): k for k, i in enumerate(idx.tolist())}
    merged: Optional[list] = None
    seen = torch.zeros(len(idx), dtype=torch.int64)
    for own_idx, out in parts:
        if out is None:
            continue
        where = torch.tensor([pos[i] for i in own_idx], dtype=torch.long)
        seen[where] += 1
        if merged is None:
            merged = [None if o is None else torch.zeros((len(idx), *o.shape[1:]), dtype=o.dtype) for o in out]
        for m, o in zip(merged, out):
            if m is not None:
                m[where] = o
    if merged is None or int(seen.min()) != 1 or int(seen.max()) != 1:
        raise RuntimeError(f"internal error in {what}: the ranks did not cover every image exactly once")
    return tuple(None if m is None else m.to(ctx.device) for m in merged)
