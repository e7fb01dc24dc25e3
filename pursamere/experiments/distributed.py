"""Sharded robustness evaluation under ``torchrun`` (torch.distributed: nccl on CUDA, gloo on CPU).

Every rank attacks a slice of the images; rank 0 reassembles the per-image survival flags in
the original order and writes ONE ``results.json`` whose rows are exactly those of
:func:`pursamere.evaluation.runner.evaluate`::

    torchrun --nproc_per_node 4 -m pursamere.experiments.distributed evaluate --preset tiny --n-images 512 --out results/tiny/run1
    python -m pursamere.experiments.distributed evaluate --preset tiny --n-images 32 --out DIR    # one process, same file

Sharding never changes a number. ``attack_flags`` attacks the clean-correct images in batches of
``batch_size`` with the SAME seed for every batch, so an image's random start depends on the batch
it sits in. The split is therefore made at batch granularity: the clean-correct images are cut
into exactly the batches a single process would use, whole batches go to ranks, and every batch is
attacked as it would be in one process (the purifier is batch-invariant and deterministic). The
merged flags equal a single-process run bit for bit on CPU, for deterministic defences; a
stochastic defence draws fresh noise per call, so its numbers agree in distribution only.

Presets: ``--preset tiny`` is built in (:func:`tiny_setup`). Others plug in through
:func:`register_preset` (``name -> fn(n, seed) -> Setup``), or, when nothing is registered under
the name, through ``pursamere.experiments.presets.evaluation_setup(name, n=..., seed=...)`` if that module
defines it. A setup builder may run on every rank independently: weights are broadcast from rank
0 afterwards (:func:`sync_defences`) and the data are checked to be identical on every rank.
"""
from __future__ import annotations

import argparse
import os
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from ..evaluation.attacks import Threat
from ..evaluation.runner import (AttackSpec, Defence, attack_flags, load_done, make_row, pending, predict, render_table,
                       row_key, worst_case)
from ..io import atomic_write_json, atomic_write_text
from ..method.train import fingerprint

__all__ = ["DistContext", "init_distributed", "shutdown", "shard_indices", "make_row", "evaluate_distributed",
           "sync_defences", "Setup", "register_preset", "build_setup", "tiny_setup", "main"]


# ------------------------------------------------------------------------------- process group
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
    ``WORLD_SIZE``): a single-process context, no group. A group that already exists (e.g. made
    by ``torch.multiprocessing.spawn`` code) is used as it is and left for its owner to destroy.

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
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a group)."""
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _from_rank0(ctx: DistContext, obj):
    """Rank 0's ``obj`` on every rank."""
    if not ctx.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective(ctx: DistContext, what: str, fn: Callable):
    """Run ``fn()`` on every rank and gather the answers; if ANY rank failed, ALL raise.

    Without this a rank that hits an error leaves the others blocked in the next collective
    until the timeout.
    """
    try:
        mine = ("ok", fn())
    except Exception as err:  # reported to every rank below, then re-raised
        if not ctx.active:
            raise
        mine = ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
    answers = _gather_all(ctx, mine)
    bad = [(r, a[1]) for r, a in enumerate(answers) if a[0] != "ok"]
    if bad:
        r, msg = bad[0]
        raise RuntimeError(f"{what} failed on rank {r} of {ctx.world_size}:\n{msg}")
    return [a[1] for a in answers]


# ------------------------------------------------------------------------------------ sharding
def shard_indices(n: int, rank: int, world: int) -> range:
    """The contiguous slice of ``0..n-1`` that ``rank`` of ``world`` owns.

    Balanced: the first ``n % world`` ranks get one more. The slices of ranks ``0..world-1``
    are disjoint, in order, and cover ``0..n-1`` exactly once (a rank may get none when
    ``n < world``).

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


def _batches_of(idx: torch.Tensor, batch_size: int, ctx: DistContext) -> torch.Tensor:
    """The images of this rank's share of the batches ``idx`` is cut into (whole batches only)."""
    n_batches = -(-len(idx) // batch_size)
    mine = shard_indices(n_batches, ctx.rank, ctx.world_size)
    return idx[mine.start * batch_size: mine.stop * batch_size]


def _merge(n: int, parts: Sequence[tuple], device) -> torch.Tensor:
    """Scatter ``(indices, flags)`` pairs from all ranks into one ``(n,)`` bool tensor."""
    full = torch.zeros(n, dtype=torch.bool)
    seen = torch.zeros(n, dtype=torch.int64)
    for idx, flags in parts:
        idx = torch.as_tensor(idx, dtype=torch.long)
        full[idx] = torch.as_tensor(flags, dtype=torch.bool)
        seen[idx] += 1
    if int(seen.max()) > 1:
        raise RuntimeError("internal error: an image was evaluated on two ranks")
    return full.to(device)


def evaluate_distributed(defences: Sequence[Defence], attacks: Sequence[AttackSpec], threats: Sequence[Threat],
                         x: torch.Tensor, y: torch.Tensor, out_dir: str | Path, seed: int = 0,
                         meta: Optional[dict] = None, batch_size: int = 64, predict_batch_size: int = 256,
                         skip: Optional[Callable] = None, progress: bool = False,
                         ctx: Optional[DistContext] = None) -> dict:
    """:func:`pursamere.evaluation.runner.evaluate`, with the images split across the ranks of a process group.

    Call it on EVERY rank with the same arguments (same data, same defences). Each rank predicts
    and attacks its share only; the flags are gathered, so every rank returns the same full
    results dictionary, and rank 0 alone writes ``out_dir/results.json`` (atomically, after every
    row; rows already there with the same settings are reused, as in ``evaluate``). Without a
    process group it runs everything in this process.

    Args:
        batch_size: attack batch size. Part of the result (it fixes which images share a random
            start's generator): keep it equal to the single-process run you compare with.
        predict_batch_size: batch size of the clean predictions (``predict``'s default 256).
        progress: a bar for rank 0's share.
        ctx: the :class:`DistContext`; ``None`` → :func:`init_distributed` (joins or makes nothing
            new when a group already exists; a group made here is NOT destroyed: call
            :func:`shutdown` with ``ctx`` made yourself to control that).

    Returns:
        ``{"meta", "rows", "worst_case"}`` exactly as ``evaluate`` returns it (``meta`` also
        records ``world_size``).
    """
    from .. import __version__

    ctx = ctx or init_distributed()
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x ({x.shape[0]}) and y ({y.shape[0]}) must be non-empty and the same length")
    if batch_size < 1 or predict_batch_size < 1:
        raise ValueError("batch_size and predict_batch_size must be >= 1")
    n = int(x.shape[0])
    combos = [(d, t, s) for d in defences for t in threats for s in attacks if skip is None or not skip(d, s, t)]
    # every rank must hold the same problem, or the merged flags would mean nothing
    stamp = (fingerprint(x, y), [row_key(d.name, s.name, t) for d, t, s in combos], seed, batch_size)
    stamps = _collective(ctx, "checking the inputs", lambda: stamp)
    if any(s != stamps[0] for s in stamps):
        raise ValueError("ranks disagree on the data, the defence × attack × threat list, seed or batch size")

    out = Path(out_dir)
    path = out / "results.json"
    data_fp = fingerprint(x, y)
    results = {"meta": {"version": __version__, "n": n, "seed": seed, "world_size": ctx.world_size,
                        "data_fingerprint": data_fp, **(meta or {})}, "rows": []}

    done = _from_rank0(ctx, load_done(path, n, data_fp) if ctx.rank == 0 else None)

    def save():
        results["worst_case"] = worst_case(results["rows"])
        if ctx.rank == 0:
            atomic_write_json(path, results)

    for a in attacks:
        if a.cascade or a.warm_from is not None:
            raise ValueError(f"attack {a.name!r}: cascaded and warm-started attacks (the ensemble of pursamere.evaluation.suite) "
                             "run in pursamere.evaluation.runner.evaluate, not in the distributed runner")
    cleans: dict = {}
    for d, threat, spec in pending(defences, attacks, threats, skip, done, seed, results["rows"]):
        key = row_key(d.name, spec.name, threat)
        clean = cleans.get(d.name)
        if clean is None:  # clean predictions: whole predict batches per rank, as one process cuts them
            own = _batches_of(torch.arange(n), predict_batch_size, ctx)
            parts = _collective(ctx, f"clean predictions of {d.name}", lambda own=own: (
                own.tolist(), (predict(d, x[own], batch_size=predict_batch_size) == y[own]).cpu().tolist()
                if len(own) else []))
            clean = cleans[d.name] = _merge(n, parts, y.device)
        t0 = time.perf_counter()
        own = _batches_of(clean.nonzero().flatten().cpu(), batch_size, ctx)
        bar = None
        if progress and ctx.rank == 0 and len(own):
            from tqdm.auto import tqdm

            bar = tqdm(total=len(own), desc=f"{d.name} · {spec.name} · {threat} (rank 0 of {ctx.world_size})",
                       leave=False, dynamic_ncols=True)

        def tick(alive, seen, bar=bar):
            if bar is not None:
                bar.n = seen
                bar.set_postfix(robust=f"{alive / max(seen, 1):.1%}")
                bar.refresh()

        def attack(own=own, d=d, spec=spec, threat=threat, tick=tick):
            if not len(own):
                return [], []
            # all of ``own`` is clean-correct, so attack_flags cuts it into the very batches
            # a single process uses (whole batches, the short last one at the end)
            f = attack_flags(d, spec, threat, x[own], y[own], seed=seed, batch_size=batch_size, progress=tick,
                             alive=torch.ones(len(own), dtype=torch.bool, device=y.device))
            return own.tolist(), f.cpu().tolist()

        parts = _collective(ctx, f"{key} (attack)", attack)
        if bar is not None:
            bar.close()
        flags = _merge(n, parts, y.device) & clean
        results["rows"].append(make_row(d, spec, threat, clean, flags, time.perf_counter() - t0, seed))
        save()
    save()
    return results


# ------------------------------------------------------------------------------------- presets
class Setup(NamedTuple):
    """What an evaluation needs: ``evaluate_distributed(*setup, out_dir)``."""

    defences: list
    attacks: list
    threats: list
    x: torch.Tensor
    y: torch.Tensor
    skip: Optional[Callable] = None  # (defence, attack, threat) -> True to leave that row out


_PRESETS: dict[str, Callable[..., Setup]] = {}


def register_preset(name: str):
    """Decorator: ``fn(n: int, seed: int) -> Setup`` becomes ``--preset name``.

    ``n`` is the number of test images (``None``: the preset's own choice). The builder may
    run on every rank; it must give the same data everywhere (weights may differ: rank 0's are
    broadcast by :func:`sync_defences`).
    """

    def deco(fn):
        _PRESETS[name] = fn
        return fn

    return deco


def build_setup(name: str, n: Optional[int] = None, seed: int = 0) -> Setup:
    """The setup of preset ``name``: registered here, else ``pursamere.experiments.presets.evaluation_setup``."""
    if name in _PRESETS:
        return Setup(*_PRESETS[name](n=n, seed=seed))
    from .pipeline import evaluation_setup  # the trained presets (digits, cifar10, ...)

    return Setup(*evaluation_setup(name, n=n, seed=seed))


@register_preset("tiny")
def tiny_setup(n: Optional[int] = 32, seed: int = 0) -> Setup:
    """CI-sized digits: a SmallCNN trained 5 epochs (~90% clean), undefended and behind an untrained tiny purifier.

    The purifier (``ScoreNet(SCORE_TINY)`` with random weights, one SAM step, M = 2) is a plumbing
    check, not a defence. Attacks: BPDA-2 and exact-3 under ℓ∞ 0.1 and ℓ2 0.5.
    """
    from .data import load_digits_split
    from ..method.nets import SCORE_TINY, ScoreNet, SmallCNN
    from ..method.purify import PurifyConfig, Purifier
    from ..method.train import ClassifierTrainConfig, train_classifier

    split = load_digits_split(seed=seed)
    torch.manual_seed(seed)
    clf = train_classifier(SmallCNN(width=8), split.x_train, split.y_train,
                           ClassifierTrainConfig(epochs=5, batch_size=64, lr=3e-3, seed=seed))
    torch.manual_seed(seed + 1)
    score = ScoreNet(SCORE_TINY).eval()
    for p in list(clf.parameters()) + list(score.parameters()):
        p.requires_grad_(False)
    pur = Purifier(score, PurifyConfig(eps_pur=0.05, m=2, n_levels=1, steps_per_level=1, sigma_max=0.05,
                                       sigma_min=0.05, seed=seed))
    defences = [Defence("undefended", clf), Defence("tiny-purifier", clf, pur)]
    # short attacks, so the random start (seeded per batch) decides some images: a sharding that
    # moved an image to another batch or position would change the flags, and the test would see it
    attacks = [AttackSpec("bpda2", gradient="bpda", steps=2), AttackSpec("exact3", gradient="exact", steps=3)]
    threats = [Threat("inf", 0.1), Threat(2, 0.5)]
    m = split.x_test.shape[0] if n is None else int(n)
    return Setup(defences, attacks, threats, split.x_test[:m], split.y_test[:m])


def sync_defences(ctx: DistContext, defences: Sequence[Defence]) -> None:
    """Give every rank rank 0's weights (classifier, purifier, and a purifier's ``score`` net)."""
    if not ctx.active:
        return
    for d in defences:
        mods = [d.classifier, d.purifier, getattr(d.purifier, "score", None)]
        for mod in mods:
            if isinstance(mod, nn.Module):
                state = _from_rank0(ctx, {k: v.cpu() for k, v in mod.state_dict().items()} if ctx.rank == 0 else None)
                mod.load_state_dict(state)


def _to_device(setup: Setup, device: torch.device) -> Setup:
    for d in setup.defences:
        for mod in (d.classifier, d.purifier, getattr(d.purifier, "score", None)):
            if isinstance(mod, nn.Module):
                mod.to(device)
    return setup._replace(x=setup.x.to(device), y=setup.y.to(device))


# ----------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m pursamere.experiments.distributed",
                                description="Sharded robustness evaluation (one results.json, same rows as one process).")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="evaluate a preset's defences × attacks × threats")
    e.add_argument("--preset", default="tiny", help="preset name (built in: tiny)")
    # not "--n": torchrun's own parser takes "--n" for an ambiguous abbreviation of its --nnodes/--nproc-per-node
    e.add_argument("--n-images", type=int, default=None, help="number of test images (default: the preset's)")
    e.add_argument("--out", required=True, help="output folder (results.json, table.md)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=64, help="attack batch size (part of the result)")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    e.add_argument("--reference", action="store_true",
                   help="run pursamere.evaluation.runner.evaluate in one process instead (for checking the sharded run)")
    e.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.reference and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        raise SystemExit("--reference is the single-process run: do not launch it with torchrun")
    ctx = init_distributed(args.device)
    try:
        built = {}

        def build():  # a rank that fails here makes every rank fail, instead of leaving them waiting
            built["setup"] = _to_device(build_setup(args.preset, n=args.n_images, seed=args.seed), ctx.device)

        _collective(ctx, f"building preset {args.preset!r}", build)
        setup = built["setup"]
        sync_defences(ctx, setup.defences)
        meta = {"preset": args.preset}
        if args.reference:
            from ..evaluation.runner import evaluate

            res = evaluate(*setup[:5], args.out, seed=args.seed, meta=meta, batch_size=args.batch_size,
                           progress=not args.no_progress, skip=setup.skip)
        else:
            res = evaluate_distributed(*setup[:5], args.out, seed=args.seed, meta=meta, batch_size=args.batch_size,
                                       progress=not args.no_progress, ctx=ctx, skip=setup.skip)
        if ctx.rank == 0:
            atomic_write_text(Path(args.out) / "table.md", render_table(res, f"{args.preset}, {ctx.world_size} rank(s)"))
            print(f"wrote {Path(args.out) / 'results.json'} ({len(res['rows'])} rows, {ctx.world_size} rank(s))")
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
