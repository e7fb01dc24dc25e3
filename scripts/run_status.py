"""Where the long evaluation jobs stand: what each results folder under ROOT has finished, the row it is inside
and how far, and which jobs the CPU queue has started and not yet ended.

    python scripts/run_status.py [results/whole]     # reads only; safe beside running jobs

For every results folder (one per job of ``scripts/cpu_queue.sh`` or ``scripts/device_evaluate.sh``) and every
defence group in it (defence × threat): attacks finished of those planned, the worst case so far (an upper bound
while attacks are missing), and, for a row in progress, the images done of those it attacks, how many it broke,
its seconds so far and a naive estimate of the rest (seconds per image so far × images left; an image that breaks
early costs less, so it is pessimistic for a strong attack). Obfuscation checks finished are counted too.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from pursamere.evaluation.runner import _checked, _kept_files, _load_kept  # the checked readers of a live folder's states


def _check_attack(f: Path) -> str:
    """A kept check attack's flags file as ``name (gradient, steps, ε × r)``; '' when it cannot be read as one."""
    try:
        kept = json.loads(f.read_text())
        spec = json.loads(kept["attack"])
        a, eps, base = spec["attack"], float(spec["eps"]), float(kept["ident"]["eps"])
        scale = "" if abs(eps - base) < 1e-12 else f", ε = {eps:g}" if eps >= 1 else f", ε × {eps / base:g}"
        what = f"{a['queries']} queries" if a["kind"] == "square" else f"{a['steps']} step" + "s" * (a["steps"] != 1)
        return f"{a['name']} ({a['gradient']}, {what}{scale})"
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return ""


def _norm(norm) -> str:
    return "∞" if str(norm) == "inf" else str(norm)


def _group_key(defence: str, norm, eps) -> tuple:
    return defence, str(norm), f"{float(eps):.6g}"  # as a row's key writes it (pursamere.evaluation.results.row_key)


def live_jobs(root: Path) -> set | None:
    """The job folders under ``root`` that a running ``pursamere ensemble`` writes (``--out``), read from
    ``/proc``; ``None`` where there is no ``/proc`` to read."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    live = set()
    for cmd in proc.glob("[0-9]*/cmdline"):
        try:
            argv = cmd.read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue
        args = [a.decode(errors="replace") for a in argv]
        outs = [b if a == "--out" else a[6:] for a, b in zip(args, args[1:] + [""])  # in order: argparse takes the last
                if a == "--out" or a.startswith("--out=")]
        if "pursamere" in args and outs:
            out = Path(outs[-1])
            if not out.is_absolute():  # relative to the job's own working directory, not this one's
                try:
                    out = Path(os.readlink(cmd.parent / "cwd")) / out
                except OSError:
                    continue
            if out.parent.resolve() == root.resolve():
                live.add(out.name)
    return live


def queue_state(root: Path) -> dict:
    """``{job: "running" | "exit N" | "started, not running"}`` from the queue's log (``queue.log``: a start line,
    then an exit line) and the live processes (a queue killed between them leaves no exit line)."""
    state = {}
    log = root / "queue.log"
    for line in (log.read_text(errors="replace").splitlines() if log.is_file() else []):
        m = re.match(r"^\S+ (\S+): (start|exit (\d+))$", line.strip())
        if m:
            state[m.group(1)] = "running" if m.group(2) == "start" else m.group(2)
    live = live_jobs(root)
    if live is not None:
        state.update({job: "started, not running" for job, st in state.items() if st == "running" and job not in live})
        state.update({job: "running" for job in live})  # started by hand, outside the queue, counts too
    return state


def folder_status(folder: Path, running: bool = False) -> list:
    """One line per defence group of ``folder``'s results.json (with its row in progress, if any); ``running``: its
    job is running (a job whose rows are all finished is then inside its obfuscation checks)."""
    res = json.loads((folder / "results.json").read_text())
    finished = {r["key"] for r in res.get("rows", [])}
    inside = {}
    for kind, _, f in _kept_files(folder, ".ckpt"):
        if kind != "rows-in-progress":
            continue
        try:
            state = _load_kept(f, "a kept row in progress", "start that row again")
        except FileNotFoundError:  # finished meanwhile
            continue
        if state is not None:
            state = _checked(state, kind, f)
            if state["key"] in finished:  # a stale copy of a row that has finished since
                continue
            defence, attack, norm, eps = state["key"].rsplit("|", 3)
            inside[_group_key(defence, norm, eps)] = (attack, state)
    lines, in_progress = [], bool(inside)
    for w in res.get("worst_case", []):
        n = int(w["n"])
        kept = sum(bool(s) for s in w["survived"])
        done, planned = len(w["attacks"]), len(w.get("planned") or w["attacks"])
        word = "complete" if w.get("complete") else f"{done} of {planned} attacks"
        line = f"  {w['defence']} · ℓ{_norm(w['norm'])} {w['eps']:.4g}: {word}, {'' if w.get('complete') else '≤ '}" \
               f"{100 * kept / n:.1f}% ({kept} of {n})"
        now = inside.pop(_group_key(w["defence"], w["norm"], w["eps"]), None)
        if now is not None:
            attack, state = now
            # a suite runs its attacks on every correctly classified image (gray-box, BPDA) before the cascaded ones,
            # which attack only the survivors: once one finished row was cascaded, so are the rest
            todo = kept if w.get("cascaded") else round(float(w["clean_acc"]) * n)
            d, secs = int(state["done"]), float(state["seconds"])
            broke = d - int(state["flags"].sum())
            eta = f", about {max(secs / d * max(todo - d, 0) / 60, 1):.0f} min left" if d and todo > d else ""
            line += f"\n    inside {attack}: {d} of {todo} images, broke {broke}, {secs:.0f} s so far{eta}"
        lines.append(line)
    for (defence, norm, eps), (attack, state) in inside.items():  # a group with no finished row yet
        lines.append(f"  {defence} · ℓ{_norm(norm)} {eps}: inside its first attack {attack}: {int(state['done'])} images, "
                     f"{float(state['seconds']):.0f} s so far")
    checks = folder / "checks.json"
    n_checks = len(json.loads(checks.read_text())) if checks.is_file() else 0
    if n_checks:
        lines.append(f"  obfuscation checks recorded: {n_checks}")
    memo = folder / "checks-in-progress"
    if memo.is_dir() and any(memo.glob("*.json")):
        kept = sorted(memo.glob("*.json"))
        names = sorted(n for n in (_check_attack(f) for f in kept) if n)
        lines.append(f"  check attacks finished in the checks under way: {len(kept)} (kept)"
                     + (f": {', '.join(names)}" if names else ""))
    groups = res.get("worst_case", [])
    if running and groups and all(w.get("complete") for w in groups) and not in_progress:
        if re.match(r"(cifar|digits)\d+-|digits-", folder.name):  # a longer suite's job (or digits): no checks
            lines.append("  every row saved so far finished: the job is starting its next attacks (the longer suite's "
                         "rows appear as they finish)")
        else:
            lines.append("  every row finished: the job is running its obfuscation checks (each saved as it finishes)")
    if "stopped" in res.get("meta", {}):
        lines.append(f"  stopped: {res['meta']['stopped']}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default="results/whole", help="the folder of the jobs' results folders")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        print(f"run_status: error: no folder {root}", file=sys.stderr)
        return 2
    queue = queue_state(root)
    folders = sorted(p.parent for p in root.glob("*/results.json"))
    for folder in folders:
        try:
            lines = folder_status(folder, running=queue.get(folder.name) == "running")
        except Exception as e:  # noqa: BLE001  one unreadable folder does not hide the others
            lines = [f"  unreadable: {type(e).__name__}: {e}"]
        print(f"{folder.name}{f'  [{queue[folder.name]}]' if folder.name in queue else ''}")
        print("\n".join(lines))
    waiting = sorted(j for j, s in queue.items() if s == "running" and not (root / j / "results.json").is_file())
    for job in waiting:
        print(f"{job}  [running]: no results.json yet")
    if not folders and not waiting:
        print(f"no results folders under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
