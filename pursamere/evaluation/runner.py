"""Running attacks: clean predictions, one attack on a set of images, and THE evaluation loop.

:func:`evaluate` runs every (defence × attack × threat) that applies, in table order, writes
``results.json`` after every row (atomically) and resumes from the rows already there. A long row
keeps its finished batches on disk as it goes (:class:`RowCheckpoint`), so a run stopped inside a
row loses at most one batch. Cascaded attacks see only the survivors of the rows before them;
warm-started attacks start from an earlier attack's end points (kept in ``end-points/`` for a
resumed run). Under ``torchrun`` the same loop shards its work over the ranks
(:mod:`pursamere.evaluation.sharding`); the rows are those of a single process.
"""
from __future__ import annotations

import hashlib
import json
import time
import zlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..io import (CorruptCheckpointError, atomic_write_json, fingerprint, load_checkpoint, load_tensor_state, save_checkpoint,
                  save_tensor_state)
from ..method.geometry import _per_item
from .apgd import apgd, top_targets
from .attacks import Threat, pgd
from .square import square
from .starts import image_seeds
from .defences import Defence, Family
from .results import (SCHEMA, cumulative, effective_settings, load_done, load_plans, make_row, pending, row_key,
                      suite_context, worst_case)
from .sharding import DistContext, broadcast_from_rank0, map_batches
from .suite import AttackSpec

__all__ = ["predict", "attack_images", "attack_flags", "evaluate", "OutOfTime", "RowCheckpoint", "export_progress",
           "import_progress", "read_progress", "write_progress"]


class OutOfTime(Exception):
    """The evaluation's time budget ran out (``evaluate(deadline=...)``); finished rows are kept."""


def _digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _file_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16] + ".ckpt"


def _load_kept(path: Path, what: str, remedy: str) -> Optional[dict]:
    """A state this module kept on disk (checksummed), or ``None`` when there is none; a corrupt one is refused."""
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path)
    except CorruptCheckpointError:
        raise ValueError(f"{path} ({what}) is corrupt: delete it to {remedy}") from None
    return state if isinstance(state, dict) else None


class RowCheckpoint:
    """The finished batches of one row in progress, on disk, so that a stopped run resumes inside the row.

    :func:`evaluate` gives one to every row of a deterministic defence it runs in one process.
    :func:`attack_images` writes the outcomes and end points of the images it has finished after
    every batch (atomically, checksummed: ``pursamere.io.save_checkpoint``) and, on the next
    run, starts after them. The file is used only when its ``identity`` matches: the same row,
    attack settings, defence weights, seed, images, batch size, the same images to attack and the
    same warm starts. The batches are then cut exactly as before and every image's random draws
    come from its own seed, so the resumed row equals an uninterrupted one bit for bit. A
    stochastic defence draws its noise from one stream per run, so its rows restart whole.
    ``keep_points=False``: only the outcomes are kept (the end points of a row that no later row
    starts from are not needed, and would make every save rewrite a growing file).
    """

    def __init__(self, path, identity: dict, keep_points: bool = True):
        self.path = Path(path)
        self.keep_points = keep_points  # False: only the outcomes are kept (no later row starts from these points)
        self.identity = _digest({**identity, "keep_points": keep_points})
        self.key = str(identity.get("key", ""))
        self.seconds_before = 0.0  # time the row ran in earlier sessions (restored with the batches)
        self.restored = 0  # images restored from disk
        self._t0 = time.perf_counter()

    def restore(self, flags: torch.Tensor, points: torch.Tensor, batch_size: int) -> int:
        """Fill the first finished images of ``flags`` and ``points`` from disk; return how many (0: none usable)."""
        state = _load_kept(self.path, "a row in progress", "restart the row")
        if state is None or state.get("identity") != self.identity:
            return 0  # written for other settings or data: that progress does not apply, and is overwritten
        done, f, p = int(state["done"]), state["flags"], state["points"]
        n = flags.shape[0]
        if (not 0 < done <= n or (done < n and done % batch_size) or tuple(f.shape) != (done,)
                or (self.keep_points and tuple(p.shape) != (done, *points.shape[1:]))):
            raise ValueError(f"{self.path} does not fit its row ({done} images of {n}): delete it to restart the row")
        flags[:done] = f.to(flags.device, flags.dtype)
        if self.keep_points:
            points[:done] = p.to(points.device, points.dtype)
        self.seconds_before, self.restored = float(state["seconds"]), done
        self._t0 = time.perf_counter()
        return done

    @property
    def seconds(self) -> float:
        """The row's running time over every session."""
        return self.seconds_before + time.perf_counter() - self._t0

    def save(self, done: int, flags: torch.Tensor, points: torch.Tensor) -> None:
        kept = points[:done] if self.keep_points else points[:0]
        save_checkpoint(self.path, {"identity": self.identity, "key": self.key, "done": int(done),
                                    "flags": flags[:done].detach().cpu().clone(),
                                    "points": kept.detach().cpu().clone(), "seconds": self.seconds})

    def clear(self) -> None:
        """The row is in ``results.json``: its batches are no longer needed."""
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()  # only when no other row is in progress there
        except OSError:
            pass


PROGRESS = ("rows-in-progress", "end-points")  # what a results folder keeps beside results.json to resume inside rows
_KEPT_KEYS = {"rows-in-progress": {"identity", "key", "done", "flags", "points", "seconds"},
              "end-points": {"identity", "attacked", "points"}}
_MAX_FILLED = 2 ** 30  # elements: end points of more images than any evaluation here attacks are refused on import


def _kept_files(folder: Path, suffix: str):
    """``(kind, stem, file)`` for every kept state under ``folder``'s progress folders. A name not written by this
    module (16 hex digits and ``suffix``) or a link is refused; a file a live run removes meanwhile is skipped."""
    for kind in PROGRESS:
        sub = Path(folder) / kind
        if sub.is_symlink():
            raise ValueError(f"{sub} is a link: kept states are plain files in plain folders")
        try:
            names = sorted(sub.iterdir()) if sub.is_dir() else []
        except FileNotFoundError:  # the run finished its rows and removed the folder since
            continue
        for f in names:
            if f.name.startswith("."):  # an atomic write's temporary file
                continue
            stem = f.name[:-len(suffix)] if f.name.endswith(suffix) else ""
            if len(stem) != 16 or any(c not in "0123456789abcdef" for c in stem):
                raise ValueError(f"{f} is not a kept state of pursamere (expected 16 hex digits and {suffix})")
            if f.is_symlink() or (f.exists() and not f.is_file()):
                raise ValueError(f"{f} is not a plain file")
            yield kind, stem, f


def _checked(state, kind: str, f: Path) -> dict:
    """``state`` if it has exactly the entries of a ``kind`` state, of the right types and ranks."""
    if not isinstance(state, dict) or set(state) != _KEPT_KEYS[kind]:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{f} does not hold a {kind} state (entries {got})")
    tensor = lambda k, rank=None: isinstance(state[k], torch.Tensor) and (rank is None or state[k].dim() == rank)  # noqa: E731
    if kind == "rows-in-progress":
        ok = (isinstance(state["identity"], str) and isinstance(state["key"], str) and type(state["done"]) is int
              and type(state["seconds"]) in (int, float) and tensor("flags", 1) and state["flags"].dtype == torch.bool
              and state["flags"].shape[0] == state["done"] and tensor("points") and state["points"].dim() >= 1)
    else:
        ok = (isinstance(state["identity"], str) and tensor("attacked", 1) and state["attacked"].dtype == torch.bool
              and tensor("points") and state["points"].dim() >= 1)
    if not ok:
        raise ValueError(f"{f}: its {kind} state has entries of the wrong type or shape")
    return state


def read_progress(src) -> list:
    """Every state :func:`export_progress` kept under ``src``, checked (SHA-256, entries, types, shapes) and made
    back into what :func:`evaluate` reads: ``[(kind, stem, state)]``. Nothing is written."""
    out = []
    for kind, stem, f in _kept_files(src, ".safetensors"):
        state = _checked(load_tensor_state(f), kind, f)  # CorruptCheckpointError is a ValueError naming the file
        if kind == "end-points":
            attacked, pts = state["attacked"], state["points"]
            n = attacked.shape[0]
            if pts.shape[0] != int(attacked.sum()) or n * pts[0].numel() > _MAX_FILLED:
                raise ValueError(f"{f}: its end points do not match its attacked images")
            full = torch.zeros((n, *pts.shape[1:]), dtype=pts.dtype)
            full[attacked] = pts  # the images not attacked are never read (a warm start covers only attacked ones)
            state = {**state, "points": full}
        out.append((kind, stem, state))
    return out


def write_progress(states: list, folder) -> tuple:
    """Write :func:`read_progress`'s states into the results folder as checkpoints, each only where the folder holds
    none (a live run's file may be newer) and, for a row in progress, only where the folder's ``results.json`` has
    not finished that row (a copy kept before the row finished is stale). Returns ``(written, kept)``."""
    written = kept = 0
    res = Path(folder) / "results.json"
    finished = {r["key"] for r in json.loads(res.read_text()).get("rows", [])} if res.is_file() else set()
    for kind, stem, state in states:
        target = Path(folder) / kind / f"{stem}.ckpt"
        if target.exists() or (kind == "rows-in-progress" and state["key"] in finished):
            kept += 1
            continue
        save_checkpoint(target, state)
        written += 1
    return written, kept


def import_progress(src, folder) -> tuple:
    """The reverse of :func:`export_progress`: every state under ``src`` checked, then written back into the results
    folder (never over a file there). Returns ``(written, kept)``."""
    return write_progress(read_progress(src), folder)


def export_progress(folder, dest, finished_rows=frozenset()) -> int:
    """Copy a results folder's rows in progress and kept end points (``torch.save`` checkpoints) to ``dest`` as
    ``safetensors`` files: no pickle, so they can be committed, and a later session on another machine resumes
    inside the rows with :func:`import_progress` and ``--resume`` (on the same kind of device: a row's identity
    includes it). Of the end points only the attacked images' are stored: no later row reads the others.

    What ``dest`` already holds is merged, not dropped: a state the folder has no file for stays (the folder may
    never have had it restored). A row in progress whose row is finished (its key in ``finished_rows``) is not kept,
    whether ``dest`` held it or the folder does (the folder's file is left alone). The match is by key: a finished
    row that a run is re-running (its settings changed) keeps its progress in the folder only, until it finishes.
    ``dest`` is then replaced as a whole (removed when nothing is left). Returns how many states it holds."""
    import shutil

    dest = Path(dest)
    states = {}
    if dest.is_dir():
        for kind, stem, f in _kept_files(dest, ".safetensors"):
            state = _checked(load_tensor_state(f), kind, f)
            if not (kind == "rows-in-progress" and state["key"] in finished_rows):
                states[kind, stem] = state
    for kind, stem, f in _kept_files(folder, ".ckpt"):
        try:
            state = _load_kept(f, f"a kept {kind} state", "start that row again")
        except FileNotFoundError:
            state = None
        if state is None:  # its row finished (a live run cleared it) since the folder was listed
            continue
        state = _checked(state, kind, f)
        if kind == "rows-in-progress" and state["key"] in finished_rows:  # a stale copy: a run stopped before it
            continue  # ended leaves its finished rows' files (only a run that ends clears them)
        if kind == "end-points":
            if state["points"].shape[0] != state["attacked"].shape[0]:
                raise ValueError(f"{f}: its end points do not match its attacked images")
            state = {**state, "points": state["points"][state["attacked"]]}
        states[kind, stem] = state
    tmp = dest.with_name(f".{dest.name}.new")
    shutil.rmtree(tmp, ignore_errors=True)
    for (kind, stem), state in sorted(states.items()):
        save_tensor_state(tmp / kind / f"{stem}.safetensors", state)
    shutil.rmtree(dest, ignore_errors=True)
    if states:
        tmp.rename(dest)
    return len(states)


@torch.no_grad()
def predict(defence: Defence, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Labels of the full defence; a stochastic one averages softmax over ``n_runs`` runs."""
    model = defence.model("none")
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        probs = sum(torch.softmax(model(xb), 1) for _ in range(defence.n_runs))
        out.append(probs.argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def _pgd_like(defence: Defence, spec: AttackSpec, model, threat: Threat, x, y, start, seeds, eot: int, stop: bool):
    """One restart of a gradient attack (PGD or untargeted APGD) on one batch: its end points."""
    if spec.kind == "pgd":
        # against a stochastic defence the "best" iterate is judged on noisy logits and could be
        # a lucky draw; the final iterate is the standard (and not weaker in expectation)
        return pgd(model, x, y, threat, steps=spec.steps, step_size=spec.step_size, loss=spec.loss, eot=eot,
                   random_start=spec.steps > 1, x_init=start, keep="last" if defence.stochastic else "best",
                   seeds=seeds, stop_early=stop)
    return apgd(model, x, y, threat, steps=spec.steps, loss=spec.kind.split("-")[1], eot=eot, x_init=start,
                seeds=seeds, stop_early=stop)


def _targeted(defence: Defence, spec: AttackSpec, model, threat: Threat, x, y, salt: int, eot: int, stop: bool):
    """APGD-T: targeted DLR against each of the ``spec.targets`` most likely wrong classes (of the clean
    image) in turn, each on the images the earlier targets left correct. Returns ``(survived, end points)``:
    an image counts as broken if any target broke it (the same rule as restarts)."""
    with torch.no_grad():
        logits = defence.model("none")(x)
    targets = top_targets(logits, y, min(spec.targets, logits.shape[1] - 1))
    out, alive = x.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
    for j in range(targets.shape[1]):
        idx = alive.nonzero().flatten()
        if not len(idx):
            break
        xa = apgd(model, x[idx], y[idx], threat, steps=spec.steps, loss="dlr-t", target=targets[idx, j], eot=eot,
                  seeds=image_seeds(x[idx], salt + j), stop_early=stop)
        out[idx] = xa.detach().to(out.dtype)
        alive[idx] = predict(defence, xa) == y[idx]
    return alive, out


def _salt(seed: int, spec: AttackSpec) -> int:
    """The run's seed mixed with the attack's name: each attack of the suite starts elsewhere."""
    return (seed * 1_000_003 + zlib.crc32(spec.name.encode())) % (1 << 31)


def check_classes(defence: Defence, attacks: Sequence[AttackSpec], x: torch.Tensor) -> None:
    """Refuse, before any attack runs, losses the classifier has too few classes for (DLR: 3, DLR-T: 4)."""
    with torch.no_grad():
        c = defence.classifier(x[:1]).shape[1]
    for a in attacks:
        need = {"apgd-dlr": 3, "apgd-t": 4}.get(a.kind, 0)
        if c < need:
            raise ValueError(f"attack {a.name!r} ({a.kind}) needs a classifier with at least {need} classes; "
                             f"{defence.name}'s has {c}: leave it out of the suite")


def attack_images(defence: Defence, spec: AttackSpec, threat: Threat, x, y, seed: int = 0, batch_size: int = 64,
                  x_init: Optional[torch.Tensor] = None, progress: Optional[Callable] = None,
                  deadline: Optional[float] = None, stop_early: bool = True,
                  checkpoint: Optional[RowCheckpoint] = None):
    """Attack every image of ``x`` (in batches); return ``(survived, end points)``.

    Every random choice of an attack is drawn from the image's own seed (:func:`~pursamere.evaluation.starts.image_seeds`: a
    hash of its bytes, the run's ``seed`` and the restart or target index), so an image's result does
    not depend on which images share its batch or survived a cascade. Against a deterministic
    defence an image leaves the attack as soon as it is broken (``stop_early``: the outcomes are the
    same, the work is not). Outcomes are always judged on the full defence (:func:`predict`).

    ``x_init``: start points, one per image (a warm start). ``progress(alive, seen)`` is called after
    every batch. ``deadline`` (a ``time.monotonic()`` value): raise :class:`OutOfTime` before a batch
    that would start after it. ``checkpoint``: a :class:`RowCheckpoint`; the batches it holds are not
    attacked again, and every finished batch is added to it.
    """
    eot = spec.eot if defence.stochastic else 1
    model = defence.model(spec.gradient, spec.unroll_last)
    # early stopping judges success on the attacked surface: only valid when that IS the deterministic defence
    # (not the gray-box classifier; not a user's unrolled(), which may be a surrogate of the true purifier)
    stop = stop_early and defence.deterministic and spec.gradient != "none" and defence.family != Family.CUSTOM
    salt = _salt(seed, spec)
    flags = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    points = x.clone()
    first = 0 if checkpoint is None else checkpoint.restore(flags, points, batch_size)
    if first and progress is not None:
        progress(int(flags[:first].sum()), first)
    for i in range(first, x.shape[0], batch_size):
        if deadline is not None and time.monotonic() > deadline:
            raise OutOfTime(f"time budget spent during {defence.name} · {spec.name} · {threat}")
        b = slice(i, i + batch_size)
        xb, yb = x[b], y[b]
        if spec.kind == "square":  # gradient-free: queries the full defence
            xa = square(defence.model("none"), xb, yb, threat, queries=spec.queries, seeds=image_seeds(xb, salt),
                        stop_early=stop_early and defence.deterministic)
            ok = predict(defence, xa) == yb
        elif spec.kind == "apgd-t":
            ok, xa = _targeted(defence, spec, model, threat, xb, yb, salt, eot, stop)
        else:
            ok, xa = None, None
            for r in range(spec.restarts):
                start = x_init[b] if (x_init is not None and r == 0) else None
                xr = _pgd_like(defence, spec, model, threat, xb, yb, start, image_seeds(xb, salt, salt=r), eot, stop)
                ok_r = predict(defence, xr) == yb
                # keep, per image, a point that breaks it if any restart found one (else the last restart's)
                xa = xr if xa is None else torch.where(_per_item(~ok_r, xr), xr, xa)
                ok = ok_r if ok is None else ok & ok_r
        flags[b] = ok
        points[b] = xa.detach().to(points.dtype)
        if checkpoint is not None:
            checkpoint.save(min(i + batch_size, x.shape[0]), flags, points)
        if progress is not None:
            progress(int(flags[: i + batch_size].sum()), min(i + batch_size, x.shape[0]))
    return flags, points


def attack_flags(defence: Defence, spec: AttackSpec, threat: Threat, x, y, seed: int = 0, batch_size: int = 64,
                 progress=None, alive: Optional[torch.Tensor] = None, x_init: Optional[torch.Tensor] = None,
                 return_points: bool = False, stop_early: bool = True):
    """Per-image survival of ``defence`` against one attack: True where still correct.

    Only images the defence classifies correctly are attacked (the others count as broken).
    ``alive``: the clean flags when the caller has them already (skips the clean prediction),
    or any subset of images to attack (a cascade attacks only the survivors).
    ``x_init``: start points for PGD, one per image (a warm start, ``spec.warm_from``).
    ``return_points``: also return the adversarial points (``x`` where an image was not attacked).
    """
    alive = (predict(defence, x) == y) if alive is None else alive.clone()
    idx = alive.nonzero().flatten()
    f, p = attack_images(defence, spec, threat, x[idx], y[idx], seed=seed, batch_size=batch_size,
                         x_init=None if x_init is None else x_init[idx], progress=progress, stop_early=stop_early)
    alive[idx] = f
    if not return_points:
        return alive
    points = x.clone()
    points[idx] = p
    return alive, points


def evaluate(defences: Sequence[Defence], attacks: Sequence[AttackSpec], threats: Sequence[Threat],
             x: torch.Tensor, y: torch.Tensor, out_dir: Optional[str | Path] = None, *, seed: int = 0,
             meta: Optional[dict] = None, progress: bool = True, batch_size: int = 64,
             applies: Optional[Callable] = None, shards: Optional[DistContext] = None, log=None,
             deadline: Optional[float] = None, stop_early: bool = True) -> dict:
    """Run every (defence × attack × threat) that ``applies`` and write ``results.json`` after each row.

    Args:
        applies: ``(defence, attack, threat) -> bool``; ``None`` runs every combination. Either way an attack
            runs only at the norms it is for (``AttackSpec.norms``).
        out_dir: where ``results.json`` goes (``None``: nothing is written). Rows already there
            (same images, settings, weights and seed) are reused: an interrupted run resumes.
        shards: a :class:`~pursamere.evaluation.sharding.DistContext` to split the work over the
            ranks of a process group; rank 0 writes. ``None``: this process does everything.
        deadline: a ``time.monotonic()`` value; the loop stops cleanly when it passes (the row being
            run is dropped, every finished row is kept and ``meta["stopped"]`` says why). Under
            ``torchrun`` every rank must be given the same deadline.
        batch_size: attack batch size. Not part of the result: each image's random choices come from
            its own seed (up to float rounding in the models; stochastic defences draw their noise per
            batch, so for them it is).
        stop_early: images leave an attack against a deterministic defence once broken (same
            outcomes, less work; ``False`` only to check exactly that).

    Attacks run in the given order within each (defence, threat); ``cascade`` attacks see only the
    survivors of the rows before them, ``warm_from`` attacks start from an earlier attack's end
    points (recomputed on the images that need them when that row was reused from disk).
    Returns the results dictionary (``meta``, ``rows``, ``worst_case``).
    """
    from tqdm.auto import tqdm

    from .. import __version__

    by_name = {a.name: a for a in attacks}
    if len(by_name) < len(attacks):
        raise ValueError(f"two attacks share a name: {[a.name for a in attacks]}")
    if len({d.name for d in defences}) < len(defences):
        raise ValueError(f"two defences share a name: {[d.name for d in defences]}")
    rule = applies

    def applies(d, a, t) -> bool:  # an attack of one norm's budget never runs at another norm, whatever the rule
        return (a.norms is None or str(t.norm) in a.norms) and (rule is None or rule(d, a, t))

    rank0 = shards is None or shards.rank == 0
    path = Path(out_dir) / "results.json" if out_dir is not None else None
    data_fp = fingerprint(x, y)
    n = int(x.shape[0])
    results = {"meta": {"schema": SCHEMA, "version": __version__, "n": n, "seed": seed, "data_fingerprint": data_fp,
                        "attack_order": [a.name for a in attacks], "batch_size": batch_size,
                        "world_size": 1 if shards is None else shards.world_size, **(meta or {})}, "rows": []}
    done = broadcast_from_rank0(shards, load_done(path, n, data_fp) if (rank0 and path is not None) else {})
    planned = {(d.name, str(t.norm), t.eps): list(suite_context(d, t, attacks, applies)) for d in defences for t in threats}
    # the old file's plans: rows of it this run does not reach stay in it, and so must their groups' plans
    old_plans = load_plans(path) if (rank0 and path is not None) else {}
    for d in defences:
        check_classes(d, [a for t in threats for a in attacks if applies is None or applies(d, a, t)], x)
    cleans: dict = {}
    points: dict = {}  # (defence, threat, attack) -> (end points, images attacked), for warm starts
    needed = {a.warm_from for a in attacks if a.warm_from}

    def save(final: bool = False):
        results["worst_case"] = worst_case(results["rows"], planned)
        if path is not None and rank0:
            # until the run is complete, rows of the old file not reached yet stay in it: stopping or
            # crashing never loses a finished row
            written = {r["key"] for r in results["rows"]}
            kept = [] if final else [r for k, r in done.items() if k not in written]
            if not kept:
                atomic_write_json(path, results)
                return
            rows = results["rows"] + kept  # its worst cases cover the kept groups too, each with its own plan
            atomic_write_json(path, {**results, "rows": rows, "worst_case": worst_case(rows, {**old_plans, **planned})})

    single = shards is None or not shards.active
    # rows in progress and the end points later rows start from are kept on disk only where they can be
    # reproduced exactly: one process, an output folder, a deterministic defence
    on_disk = path is not None and single
    in_progress, end_points = (None, None) if path is None else (path.parent / PROGRESS[0], path.parent / PROGRESS[1])

    def identity(d, spec, threat, context) -> dict:
        """Everything one image's result in this row depends on, but for the images and start points. Like a
        finished row (:func:`~pursamere.evaluation.results.reusable`), not the package version: a change of what an
        attack does changes its settings (``ATTACK_REVISION``)."""
        return {"key": row_key(d.name, spec.name, threat), "attack_settings": effective_settings(spec, threat, d, context),
                "defence_fingerprint": d.fingerprint(), "seed": seed, "data": data_fp, "eps": repr(threat.eps),
                "stop_early": stop_early, "device": str(x.device), "dtype": str(x.dtype)}

    def row_checkpoint(d, spec, threat, context, todo, x_init):
        """A :class:`RowCheckpoint` for this row (one process, a deterministic defence, an output folder)."""
        if not on_disk or not d.deterministic:
            return None
        idx = todo.nonzero().flatten()
        ident = {**identity(d, spec, threat, context), "batch_size": batch_size, "todo": idx.tolist(),
                 "x_init": None if x_init is None else fingerprint(x_init[idx].contiguous())}
        return RowCheckpoint(in_progress / _file_name(ident["key"]), ident, keep_points=spec.name in needed)

    def store_points(d, spec, threat, context, pts, attacked):
        """Keep a finished row's end points when a later row starts from them: a resumed run then reads them
        instead of running the attack again."""
        if on_disk and d.deterministic:
            save_checkpoint(end_points / _file_name(row_key(d.name, spec.name, threat)),
                            {"identity": _digest(identity(d, spec, threat, context)), "attacked": attacked.cpu().clone(),
                             "points": pts.detach().cpu().clone()})

    def stored_points(d, spec, threat, todo):
        """The end points :func:`store_points` kept for this row, if they are this run's and cover ``todo``."""
        if not on_disk or not d.deterministic:
            return None
        state = _load_kept(end_points / _file_name(row_key(d.name, spec.name, threat)), "kept end points",
                           "recompute them")
        context = suite_context(d, threat, attacks, applies)[spec.name]
        if state is None or state.get("identity") != _digest(identity(d, spec, threat, context)):
            return None
        attacked, pts = state["attacked"].to(todo.device), state["points"].to(x.device, x.dtype)
        if tuple(attacked.shape) != (n,) or tuple(pts.shape) != tuple(x.shape) or bool((todo & ~attacked).any()):
            return None
        return pts, attacked

    def run(d, spec, threat, todo, x_init=None, tick=None, checkpoint=None):
        """``(survived, end points)`` over all n images; only the ``todo`` ones are attacked."""
        idx = todo.nonzero().flatten()

        def fn(own):
            # inside a row the deadline is checked per batch only in one process: ranks would disagree
            return attack_images(d, spec, threat, x[own], y[own], seed=seed, batch_size=batch_size,
                                 x_init=None if x_init is None else x_init[own], progress=tick,
                                 deadline=deadline if single else None, stop_early=stop_early,
                                 checkpoint=checkpoint if single else None)

        f, p = map_batches(shards, f"{d.name} · {spec.name} · {threat}", idx, batch_size, fn)
        flags, pts = torch.zeros_like(todo), x.clone()
        flags[idx], pts[idx] = f.to(flags.device), p.to(pts.dtype)
        return flags, pts

    def start_points(d, threat, spec, todo):
        """End points of ``spec.warm_from`` for the images in ``todo``; recomputed (on those images,
        itself warm-started where it was) when its row was reused from disk."""
        src = (d.name, str(threat), spec.warm_from)
        if src not in points:
            s_spec = by_name[spec.warm_from]
            points[src] = stored_points(d, s_spec, threat, todo)
            if points[src] is None:
                init = start_points(d, threat, s_spec, todo) if s_spec.warm_from else None
                points[src] = (run(d, s_spec, threat, todo, init)[1], todo.clone())
                # kept like a finished row's (every image's start is its own: the same points as the first run's on
                # these images), so a run stopped later in this row does not recompute them again
                store_points(d, s_spec, threat, suite_context(d, threat, attacks, applies)[s_spec.name], *points[src])
        pts, attacked = points[src]
        missing = int((todo & ~attacked).sum())
        if missing:
            raise ValueError(f"{spec.name!r} would start from {spec.warm_from!r}'s end points on {missing} images that "
                             f"{spec.warm_from!r} never attacked ({d.name}, {threat}): make it cascaded after it")
        return pts

    def clean_flags(d):
        if d.name not in cleans:
            (pred,) = map_batches(shards, f"clean predictions of {d.name}", torch.arange(n, device=x.device), 256,
                                  lambda own: (predict(d, x[own]),))
            cleans[d.name] = pred.to(y.device) == y
        return cleans[d.name]

    def run_row(d, threat, spec, context):
        clean = clean_flags(d)
        todo = cumulative(results["rows"], d.name, threat, clean) if spec.cascade else clean
        x_init = start_points(d, threat, spec, todo) if spec.warm_from is not None else None
        t0 = time.perf_counter()
        bar = tqdm(total=int(todo.sum()), desc=f"{d.name} · {spec.name} · {threat}", leave=False,
                   disable=not (progress and rank0), dynamic_ncols=True)

        def tick(alive, seen, bar=bar):
            bar.n = seen
            bar.set_postfix(robust=f"{alive / max(seen, 1):.1%}")
            bar.refresh()

        ck = row_checkpoint(d, spec, threat, context, todo, x_init)
        flags, pts = run(d, spec, threat, todo, x_init, tick, ck)
        bar.close()
        if spec.name in needed:
            points[(d.name, str(threat), spec.name)] = (pts, todo.clone())
            store_points(d, spec, threat, context, pts, todo)
        seconds = ck.seconds if ck is not None else time.perf_counter() - t0
        results["rows"].append(make_row(d, spec, threat, clean, flags, seconds, seed, context))
        if log is not None and rank0:
            r = results["rows"][-1]
            resumed = f", resumed after {ck.restored} of {int(todo.sum())} images" if ck is not None and ck.restored else ""
            log(f"{d.name} · {spec.name} · {threat}: {100 * r['robust_acc']:.1f}% of {n} ({r['seconds']:.0f} s{resumed})")
        save()
        if ck is not None:
            ck.clear()

    try:
        for d, threat, spec, context in pending(defences, attacks, threats, applies, done, seed, results["rows"]):
            if deadline is not None and broadcast_from_rank0(shards, time.monotonic() > deadline):
                raise OutOfTime(f"time budget spent before {d.name} · {spec.name} · {threat}")
            run_row(d, threat, spec, context)
    except OutOfTime as e:
        results["meta"]["stopped"] = str(e)
        if log is not None and rank0:
            log(f"stopped: {e}; {len(results['rows'])} finished rows kept")
    complete = "stopped" not in results["meta"]
    save(final=complete)
    if complete and on_disk and in_progress.is_dir():  # rows finished or reused: what was kept of them is spent
        for r in results["rows"]:
            (in_progress / _file_name(r["key"])).unlink(missing_ok=True)
        if not any(in_progress.iterdir()):
            in_progress.rmdir()
    return results
