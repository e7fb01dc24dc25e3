"""Robustness evaluation: defences × attacks × threats → rows, worst case, tables, plots, checks.

One row per (defence, attack, threat) with n, clean accuracy, robust accuracy and a 95% Wilson
interval, the attack's settings, the purifier's config, seed, version and wall time, and the
per-image survival flags. The headline number of a defence is its WORST CASE per image over the
whole attack suite (AutoAttack's way of counting): an image is robust only if it survived every
attack run at that threat. Results are written atomically after every row; an interrupted
evaluation resumes from the rows already in ``results.json``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from .attacks import Defended, Threat, pgd
from ..method.geometry import _per_item
from ..io import atomic_write_bytes, atomic_write_json

__all__ = ["Defence", "AttackSpec", "ATTACKS", "wilson", "predict", "attack_flags", "evaluate", "worst_case",
           "render_table", "plot_results", "Identity", "make_row", "row_key", "bits", "load_done", "reusable",
           "suite_context"]


class Identity:
    """The no-op purifier (the undefended classifier), differentiable for every gradient mode."""

    def __call__(self, x):
        return x

    def unrolled(self, x, checkpoint: bool = True):
        return x


@dataclass
class Defence:
    """A classifier with an optional purifier in front.

    Args:
        name: label in tables.
        classifier: ``nn.Module`` ``x -> logits`` (eval mode).
        purifier: ``x -> x`` (``None`` = undefended).
        stochastic: the purifier draws fresh noise per call (attack with EoT; predictions
            average ``n_runs`` runs). Read from ``purifier.config.fixed_noise`` when omitted.
        n_runs: runs averaged per prediction (ADP's protocol: 10). Read from the config.
    """

    name: str
    classifier: nn.Module
    purifier: Optional[Callable] = None
    stochastic: Optional[bool] = None
    n_runs: Optional[int] = None

    def __post_init__(self):
        if self.purifier is None:
            self.purifier = Identity()
        cfg = getattr(self.purifier, "config", None)
        if self.stochastic is None:
            self.stochastic = cfg is not None and hasattr(cfg, "fixed_noise") and not cfg.fixed_noise
        if self.n_runs is None:
            self.n_runs = int(getattr(cfg, "n_runs", 1)) if self.stochastic else 1

    def model(self, gradient: str, unroll_last: Optional[int] = None) -> Defended:
        """The defence as an attackable module with the given gradient rule (``unroll_last``:
        partial unrolling, see :class:`pursamere.evaluation.attacks.Defended`)."""
        if unroll_last is not None and isinstance(self.purifier, Identity):
            unroll_last = None  # nothing to unroll: the exact gradient of the identity
        return Defended(self.classifier, self.purifier, gradient=gradient, unroll_last=unroll_last)

    def fingerprint(self) -> str:
        """A hash of the classifier's and the purifier's weights and config: rows made by another
        defence under the same name are never reused on resume."""
        from ..method.train import config_hash, fingerprint

        tensors = list(self.classifier.state_dict().values())
        score = getattr(self.purifier, "score", None)
        if isinstance(score, nn.Module):
            tensors += list(score.state_dict().values())
        return f"{fingerprint(*tensors)}-{config_hash(self.config_dict())}"

    def config_dict(self) -> dict:
        cfg = getattr(self.purifier, "config", None)
        if cfg is None or not dataclasses.is_dataclass(cfg):
            return {}
        return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the suite.

    ``gradient``: how gradients cross the purifier (``"none"`` gray-box, ``"bpda"``,
    ``"exact"``); ``kind``: ``"pgd"``, ``"square"`` (gradient-free), ``"apgd-ce"``/``"apgd-dlr"``
    (torchattacks). ``eot`` is used only against stochastic defences (it is 1 otherwise).

    Adaptive additions (the ensemble of :mod:`pursamere.evaluation.suite`):

    - ``unroll_last=k`` with ``gradient="exact"``: partial unrolling, exact gradients through the
      purifier's last k steps and straight-through for the rest (``0`` = BPDA, ``None`` = all).
    - ``warm_from="NAME"``: PGD starts from the end points of the attack NAME of the same suite
      (for example the exact gradient started where BPDA stopped) instead of a random start.
    - ``cascade=True``: AutoAttack's way of counting — the attack runs only on the images that
      survived every attack before it in the suite, and its row records the CUMULATIVE
      survival (robust to this attack and all earlier ones). Saves the cost of attacking
      images that are already broken; the worst case is unchanged by it.
    """

    name: str
    gradient: str = "bpda"
    steps: int = 20
    eot: int = 1
    loss: str = "ce"
    kind: str = "pgd"
    step_size: Optional[float] = None
    restarts: int = 1
    queries: int = 1000  # Square only
    unroll_last: Optional[int] = None
    warm_from: Optional[str] = None
    cascade: bool = False

    def __post_init__(self):
        from .attacks import GRADIENTS

        if self.gradient not in GRADIENTS:
            raise ValueError(f"AttackSpec {self.name!r}: unknown gradient {self.gradient!r}, use one of {GRADIENTS}")
        if self.kind not in _KINDS:
            raise ValueError(f"AttackSpec {self.name!r}: unknown kind {self.kind!r}, use one of {_KINDS}")
        for k in ("steps", "eot", "restarts", "queries"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"AttackSpec {self.name!r}: {k} must be an integer >= 1, got {v!r}")
        if self.unroll_last is not None and (self.gradient != "exact" or self.kind != "pgd"):
            raise ValueError(f"AttackSpec {self.name!r}: unroll_last needs kind='pgd' and gradient='exact'")
        if self.warm_from is not None and self.kind != "pgd":
            raise ValueError(f"AttackSpec {self.name!r}: warm_from needs kind='pgd'")
        if self.warm_from == self.name:
            raise ValueError(f"AttackSpec {self.name!r}: cannot start from its own end points")

    def settings(self, threat: Threat) -> dict:
        d = dataclasses.asdict(self)
        if self.kind == "pgd":
            from .attacks import default_step_size

            d["step_size"] = self.step_size if self.step_size is not None else default_step_size(threat, self.steps)
        return d


_KINDS = ("pgd", "square", "apgd-ce", "apgd-dlr")

#: The named attacks of the paper (and what it lacks). "-det": the purifier's seed is fixed and known.
ATTACKS = {
    "gpgd20": AttackSpec("gpgd20", gradient="none", steps=20),
    "bpda20-det": AttackSpec("bpda20-det", gradient="bpda", steps=20),
    "bpda200-det": AttackSpec("bpda200-det", gradient="bpda", steps=200),
    "exact20": AttackSpec("exact20", gradient="exact", steps=20),
    "bpda20-eot": AttackSpec("bpda20-eot", gradient="bpda", steps=20, eot=8),
    "fgsm-bpda": AttackSpec("fgsm-bpda", gradient="bpda", steps=1),
    "square": AttackSpec("square", gradient="none", kind="square", queries=1000),
    "apgd-ce": AttackSpec("apgd-ce", gradient="bpda", kind="apgd-ce", steps=50),
    "apgd-dlr": AttackSpec("apgd-dlr", gradient="bpda", kind="apgd-dlr", steps=50),
}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


@torch.no_grad()
def predict(defence: Defence, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Labels of the full defence; a stochastic one averages softmax over ``n_runs`` runs."""
    model = defence.model("none")
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        probs = sum(torch.softmax(model(xb), 1) for _ in range(defence.n_runs))
        out.append(probs.argmax(1))
    return torch.cat(out)


def _torchattacks(spec: AttackSpec, model: nn.Module, threat: Threat, x, y, seed: int):
    import torchattacks

    norm = {"inf": "Linf", 2: "L2"}.get(threat.norm)
    if norm is None:
        raise ValueError(f"{spec.kind} supports ℓ∞ and ℓ2 only, not ℓ{threat.norm}")
    if spec.kind == "square":
        atk = torchattacks.Square(model, norm=norm, eps=threat.eps, n_queries=spec.queries, n_restarts=1, seed=seed)
    else:
        atk = torchattacks.APGD(model, norm=norm, eps=threat.eps, steps=spec.steps, n_restarts=spec.restarts,
                                loss=spec.kind.split("-")[1], eot_iter=spec.eot, seed=seed)
    return atk(x, y).detach()


def attack_flags(defence: Defence, spec: AttackSpec, threat: Threat, x, y, seed: int = 0,
                 batch_size: int = 64, progress=None, alive: Optional[torch.Tensor] = None,
                 x_init: Optional[torch.Tensor] = None, return_points: bool = False):
    """Per-image survival of ``defence`` against one attack: True where still correct.

    Only images the defence classifies correctly are attacked (the others count as broken).
    ``alive``: the clean flags when the caller has them already (skips the clean prediction),
    or any subset of images to attack (a cascade attacks only the survivors).
    ``x_init``: start points for PGD, one per image (a warm start, ``spec.warm_from``).
    ``return_points``: also return the adversarial points (``x`` where an image was not attacked).
    """
    alive = (predict(defence, x) == y) if alive is None else alive.clone()
    eot = spec.eot if defence.stochastic else 1
    model = defence.model(spec.gradient, spec.unroll_last)
    idx = alive.nonzero().flatten()
    points = x.clone() if return_points else None
    for i in range(0, len(idx), batch_size):
        b = idx[i:i + batch_size]
        if spec.kind == "pgd":
            best, kept = None, None
            for r in range(spec.restarts):
                start = x_init[b] if (x_init is not None and r == 0) else None
                # against a stochastic defence the "best" iterate is judged on noisy logits and could be
                # a lucky draw; the final iterate is the standard (and not weaker in expectation)
                xa = pgd(model, x[b], y[b], threat, steps=spec.steps, step_size=spec.step_size, loss=spec.loss,
                         eot=eot, seed=seed + 1000 * r, random_start=spec.steps > 1, x_init=start,
                         keep="last" if defence.stochastic else "best")
                ok = predict(defence, xa) == y[b]
                # keep, per image, a point that breaks it if any restart found one (else the last restart's)
                kept = xa if kept is None else torch.where(_per_item(~ok, xa), xa, kept)
                best = ok if best is None else best & ok
            alive[b], xa = best, kept
        else:
            # Square queries the full defence; APGD differentiates the attack surface (the bare
            # classifier for gray-box, the defence otherwise)
            target = defence.model("none") if spec.kind == "square" else model.attack_surface()
            xa = _torchattacks(dataclasses.replace(spec, eot=eot), target, threat, x[b], y[b], seed)
            alive[b] = predict(defence, xa) == y[b]
        if points is not None:
            points[b] = xa.detach().to(points.dtype)
        if progress is not None:
            progress(int(alive[idx[: i + len(b)]].sum()), i + len(b))
    return (alive, points) if return_points else alive


def row_key(defence: str, attack: str, threat: Threat) -> str:
    return f"{defence}|{attack}|{threat.norm}|{threat.eps:.6g}"


def bits(flags: torch.Tensor) -> str:
    """Per-image flags as a compact '0'/'1' string (the ``survived`` field)."""
    return "".join("1" if f else "0" for f in flags.tolist())


def make_row(defence: Defence, spec: AttackSpec, threat: Threat, clean: torch.Tensor, flags: torch.Tensor,
             seconds: float, seed: int, context: Optional[dict] = None) -> dict:
    """One ``results.json`` row.

    Args:
        clean: ``(n,)`` bool, the defence's clean prediction was right.
        flags: ``(n,)`` bool, the image survived this attack (:func:`attack_flags`).
    """
    from .. import __version__

    k, n = int(flags.sum()), int(flags.shape[0])
    lo, hi = wilson(k, n)
    return {
        "key": row_key(defence.name, spec.name, threat), "defence": defence.name, "attack": spec.name,
        "norm": str(threat.norm), "eps": threat.eps, "n": n, "clean_acc": float(clean.double().mean()),
        "robust_acc": k / n, "ci95": [lo, hi], "attack_settings": effective_settings(spec, threat, defence, context),
        "stochastic": bool(defence.stochastic), "config": defence.config_dict(), "defence_fingerprint": defence.fingerprint(),
        "seed": seed, "version": __version__, "seconds": round(seconds, 2), "survived": bits(flags),
        "cascade": bool(spec.cascade),
    }


def effective_settings(spec: AttackSpec, threat: Threat, defence: Defence, context: Optional[dict] = None) -> dict:
    """The attack's settings as run against this defence (EoT only against stochastic ones).

    ``context`` (from :func:`suite_context`) adds what a cascaded or warm-started row depends on:
    the attacks before it in its suite, and the settings of the attack whose end points it starts from.
    """
    d = json.loads(json.dumps(spec.settings(threat)))
    if not defence.stochastic:
        d["eot"] = 1
    if context:
        d.update(json.loads(json.dumps(context)))
    return d


def suite_context(d: Defence, threat: Threat, attacks: Sequence[AttackSpec], skip: Optional[Callable]) -> dict:
    """Per attack name, what its row depends on besides its own settings (see :func:`effective_settings`):
    ``after`` = the attacks run before a cascaded one at this (defence, threat), in order;
    ``warm_settings`` = the full settings of a warm start's source."""
    applicable = [a for a in attacks if skip is None or not skip(d, a, threat)]
    ctx: dict = {}
    for i, a in enumerate(applicable):
        c = {}
        if a.cascade:
            c["after"] = [b.name for b in applicable[:i]]
        if a.warm_from is not None:
            src = next((b for b in applicable[:i] if b.name == a.warm_from), None)
            if src is None:
                raise ValueError(f"attack {a.name!r} starts from {a.warm_from!r}, which must be an earlier attack of the "
                                 f"suite that runs against {d.name} at {threat}")
            c["warm_settings"] = effective_settings(src, threat, d, ctx[src.name])
        ctx[a.name] = c
    return ctx


def load_done(path: Path, n: int, data: str | None = None) -> dict:
    """Rows of a previous (possibly interrupted) run at ``path`` on the same images, by key.

    ``data`` is the fingerprint of the images and labels; a file made on other images (or
    without a fingerprint) gives nothing to reuse.
    """
    if not Path(path).exists():
        return {}
    old = json.loads(Path(path).read_text())
    if data is not None and old.get("meta", {}).get("data_fingerprint") != data:
        return {}
    return {r["key"]: r for r in old.get("rows", []) if r.get("n") == n}


def reusable(done: dict, key: str, spec: AttackSpec, threat: Threat, defence: Defence, seed: int,
             context: Optional[dict] = None) -> bool:
    """A finished row can be reused only if the attack (with its ``context``), the defence (weights and
    config) and seed match."""
    r = done.get(key)
    return (r is not None and r["attack_settings"] == effective_settings(spec, threat, defence, context)
            and r.get("defence_fingerprint") == defence.fingerprint() and r.get("seed") == seed)


def pending(defences, attacks, threats, skip, done: dict, seed: int, rows: list):
    """Yield the ``(defence, threat, attack)`` rows still to run, in table order; finished rows
    that can be reused (:func:`reusable`) are appended to ``rows`` instead.

    A cascaded row depends on every row before it in its (defence, threat) group, so it is
    reused only when all of those were reused too.
    """
    for d in defences:
        for threat in threats:
            group_reused = True
            ctx = suite_context(d, threat, attacks, skip)
            for spec in attacks:
                if skip is not None and skip(d, spec, threat):
                    continue
                key = row_key(d.name, spec.name, threat)
                if reusable(done, key, spec, threat, d, seed, ctx[spec.name]) and (group_reused or not spec.cascade):
                    rows.append(done[key])
                    continue
                group_reused = False
                yield d, threat, spec


def _cumulative(rows: list, defence: str, threat: Threat, clean: torch.Tensor) -> torch.Tensor:
    """Images that survived every row of this (defence, threat) so far (the running worst case)."""
    alive = clean.clone()
    for r in rows:
        if r["defence"] == defence and r["norm"] == str(threat.norm) and r["eps"] == threat.eps:
            alive &= torch.tensor([c == "1" for c in r["survived"]], dtype=torch.bool, device=clean.device)
    return alive


def evaluate(defences: Sequence[Defence], attacks: Sequence[AttackSpec], threats: Sequence[Threat],
             x: torch.Tensor, y: torch.Tensor, out_dir: str | Path, seed: int = 0, meta: Optional[dict] = None,
             progress: bool = True, batch_size: int = 64, skip: Optional[Callable] = None) -> dict:
    """Run every (defence × attack × threat) and write ``results.json`` after each row.

    Rows already present (same key and settings) are reused: an interrupted evaluation resumes.
    ``skip(defence, spec, threat) -> bool`` leaves out combinations that do not apply.
    Attacks run in the given order within each (defence, threat); ``cascade`` attacks see only
    the survivors of the rows before them, ``warm_from`` attacks start from an earlier attack's
    end points (recomputed on the images that need them when that row was reused from disk).
    Returns the results dictionary (``meta``, ``rows``, ``worst_case``).
    """
    from tqdm.auto import tqdm

    from .. import __version__

    by_name = {a.name: a for a in attacks}
    if len(by_name) < len(attacks):
        raise ValueError(f"two attacks share a name: {[a.name for a in attacks]}")
    out = Path(out_dir)
    path = out / "results.json"
    from ..method.train import fingerprint

    data_fp = fingerprint(x, y)
    results = {"meta": {"version": __version__, "n": int(x.shape[0]), "seed": seed, "data_fingerprint": data_fp,
                        "attack_order": [a.name for a in attacks], **(meta or {})}, "rows": []}
    done = load_done(path, int(x.shape[0]), data_fp)
    cleans: dict = {}
    points: dict = {}  # (defence, threat, attack) -> (end points, images attacked), for warm starts
    needed = {a.warm_from for a in attacks if a.warm_from}

    def start_points(d, threat, spec, todo):
        """End points of ``spec.warm_from`` for the images in ``todo``; recomputed (on those images,
        itself warm-started where it was) when its row was reused from disk."""
        src = (d.name, str(threat), spec.warm_from)
        if src not in points:
            s_spec = by_name[spec.warm_from]
            init = start_points(d, threat, s_spec, todo) if s_spec.warm_from else None
            _, pts = attack_flags(d, s_spec, threat, x, y, seed=seed, batch_size=batch_size, alive=todo, x_init=init,
                                  return_points=True)
            points[src] = (pts, todo.clone())
        pts, attacked = points[src]
        missing = int((todo & ~attacked).sum())
        if missing:
            raise ValueError(f"{spec.name!r} would start from {spec.warm_from!r}'s end points on {missing} images that "
                             f"{spec.warm_from!r} never attacked ({d.name}, {threat}): make it cascaded after it")
        return pts

    for d, threat, spec in pending(defences, attacks, threats, skip, done, seed, results["rows"]):
        if d.name not in cleans:
            cleans[d.name] = predict(d, x) == y
        clean = cleans[d.name]
        todo = _cumulative(results["rows"], d.name, threat, clean) if spec.cascade else clean
        x_init = start_points(d, threat, spec, todo) if spec.warm_from is not None else None
        context = suite_context(d, threat, attacks, skip)[spec.name]
        t0 = time.perf_counter()
        bar = tqdm(total=int(todo.sum()), desc=f"{d.name} · {spec.name} · {threat}", leave=False,
                   disable=not progress, dynamic_ncols=True)

        def tick(alive, seen, bar=bar):
            bar.n = seen
            bar.set_postfix(robust=f"{alive / max(seen, 1):.1%}")
            bar.refresh()

        flags, pts = attack_flags(d, spec, threat, x, y, seed=seed, batch_size=batch_size, progress=tick, alive=todo,
                                  x_init=x_init, return_points=True)
        bar.close()
        seconds = time.perf_counter() - t0
        if spec.name in needed:
            points[(d.name, str(threat), spec.name)] = (pts, todo.clone())
        results["rows"].append(make_row(d, spec, threat, clean, flags, seconds, seed, context))
        results["worst_case"] = worst_case(results["rows"])
        atomic_write_json(path, results)
    results["worst_case"] = worst_case(results["rows"])
    atomic_write_json(path, results)
    return results


def worst_case(rows: Sequence[dict]) -> list[dict]:
    """Per (defence, threat): an image is robust only if it survived EVERY attack run there."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["defence"], r["norm"], r["eps"]), []).append(r)
    out = []
    for (d, norm, eps), rs in groups.items():
        flags = [int(all(r["survived"][i] == "1" for r in rs)) for i in range(rs[0]["n"])]
        k, n = sum(flags), len(flags)
        out.append({"defence": d, "norm": norm, "eps": eps, "n": n, "clean_acc": rs[0]["clean_acc"],
                    "robust_acc": k / n, "ci95": list(wilson(k, n)), "attacks": [r["attack"] for r in rs],
                    "per_attack": {r["attack"]: r["robust_acc"] for r in rs},
                    "cascaded": [r["attack"] for r in rs if r.get("cascade")]})
    return out


def _norm_label(norm: str, eps: float) -> str:
    return f"ℓ{'∞' if norm == 'inf' else norm} ε={eps:.4g}"


def render_table(results: dict, title: str = "") -> str:
    """Markdown: one line per defence and threat; clean, each attack, and the worst case (bold)."""
    rows, wc = results["rows"], results.get("worst_case") or worst_case(results["rows"])
    order = results["meta"].get("attack_order") or []
    seen = list(dict.fromkeys(r["attack"] for r in rows))
    attacks = [a for a in order if a in seen] + [a for a in seen if a not in order]
    cascaded = {r["attack"] for r in rows if r.get("cascade")}
    note = (" † = run only on the images that survived every attack before it (the columns to its left, "
            "AutoAttack's cascade): its number is the cumulative accuracy after it." if cascaded else "")
    lines = [f"## {title}" if title else "", "",
             f"n = {results['meta']['n']} images; robust accuracy in % (95% Wilson interval in the JSON); "
             "worst case = robust to every attack in the row." + note, "",
             "| defence | threat | clean | " + " | ".join(a + (" †" if a in cascaded else "") for a in attacks)
             + " | **worst case** |",
             "|---|---|---|" + "---|" * len(attacks) + "---|"]
    for w in wc:
        cells = [f"{100 * w['per_attack'][a]:.1f}" if a in w["per_attack"] else "–" for a in attacks]
        lines.append(f"| {w['defence']} | {_norm_label(w['norm'], w['eps'])} | {100 * w['clean_acc']:.1f} | "
                     + " | ".join(cells) + f" | **{100 * w['robust_acc']:.1f}** [{100 * w['ci95'][0]:.0f}–{100 * w['ci95'][1]:.0f}] |")
    return "\n".join(lines).lstrip() + "\n"


def plot_results(results: dict, path: str | Path) -> Path:
    """Seaborn figure: worst-case robust accuracy per defence (against ε where several were run)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    wc = results.get("worst_case") or worst_case(results["rows"])
    df = pd.DataFrame([{"defence": w["defence"], "threat": f"ℓ{'∞' if w['norm'] == 'inf' else w['norm']}", "ε": w["eps"],
                        "robust accuracy (%)": 100 * w["robust_acc"], "clean accuracy (%)": 100 * w["clean_acc"]} for w in wc])
    threats = sorted(df["threat"].unique())
    fig, axes = plt.subplots(1, len(threats), figsize=(5.5 * len(threats), 4), squeeze=False)
    for ax, t in zip(axes[0], threats):
        sub = df[df["threat"] == t]
        if sub["ε"].nunique() > 1:
            sns.lineplot(data=sub, x="ε", y="robust accuracy (%)", hue="defence", marker="o", ax=ax)
        else:
            sns.barplot(data=sub, y="defence", x="robust accuracy (%)", ax=ax, color="tab:blue")
            ax.set_xlim(0, 100)
        ax.set_title(f"worst-case robust accuracy, {t}" + (f", ε = {sub['ε'].iloc[0]:.3g}" if sub["ε"].nunique() == 1 else ""))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
