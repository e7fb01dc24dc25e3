"""Protocols as data: which defences, which attacks, which threats, which images.

A :class:`Protocol` says everything an evaluation runs on a preset's trained models; the one
engine (:func:`pursamere.experiments.engine.run`) carries it out. Every protocol of the project is
built here from the preset's values:

- :func:`tables` — the paper's Tables 1–3 in miniature (``pursamere demo`` / ``reproduce``),
- :func:`ensemble` — every defence against the standard attack ensemble (``pursamere ensemble``),
- :func:`sam_study` and :func:`attack_study` — the two studies on the validation images,
- :func:`schedule_sweep` — the purification-schedule sweep on the validation images,
- :func:`custom` — chosen families × named attacks × threats (``pursamere evaluate``).

Which attack runs against which defence is decided on structured fields: the defence's
:class:`~pursamere.evaluation.defences.Family`, determinism and purifier capabilities, and the
attack's :class:`~pursamere.evaluation.suite.Role` — never on a display name.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..evaluation.attacks import Threat
from ..evaluation.defences import Family, config_family
from ..evaluation.suite import AttackSpec, Budget, Role, applies as standard_applies, standard_suite

__all__ = ["Plan", "EnsemblePlan", "DefenceSpec", "Images", "Protocol", "tables", "ensemble", "sam_study",
           "sam_settings", "attack_study", "schedule_sweep", "custom", "NAMED_ATTACKS", "select_defences", "budget_at",
           "suite_then", "then_budgets",
           "CONVERGENCE_LADDER", "convergence"]

ALL_NORMS = ("inf", "2", "1")


# ------------------------------------------------------------------------------------------ budgets
@dataclass(frozen=True)
class Plan:
    """What the tables run: subset size and step counts (``demo`` is a budgeted version of ``full``)."""

    n_test: Optional[int] = None  # table images (None: all), first n of a fixed permutation
    gpgd_steps: int = 20  # Table 1 (gPGD20)
    bpda_steps: int = 20  # Table 2 (BPDA20-det)
    bpda_long_steps: int = 200  # Table 3 (BPDA200-det ℓ∞/ℓ2/ℓ1)
    exact_steps: int = 20  # exact gradient through the unrolled purifier (not in the paper)
    eot: int = 8  # BPDA+EoT samples per step for stochastic baselines
    n_check: int = 32  # images for the obfuscation checks
    check_gradients: tuple = ("bpda", "exact")  # white-box gradient rules the checks test
    check_steps: int = 10
    square_queries: int = 300
    batch_size: int = 64


@dataclass(frozen=True)
class EnsemblePlan:
    """Images, budgets and step counts of the attack ensemble."""

    n_test: int = 64
    eps: tuple = (0.1, 0.15, 0.2)  # ℓ∞ budgets: accuracy-versus-ε curves
    budget: Budget = field(default_factory=Budget)
    batch_size: int = 64
    # a longer suite run after ``budget``'s on the images it left, every attack cascaded (``ensemble --then-steps``):
    # the worst case over both runs, at the cost of the longer one on the survivors only
    then: Optional[Budget] = None  # or a tuple of budgets, each run on what all before it left


# ----------------------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class DefenceSpec:
    """A defence to build from a preset's trained models.

    Args:
        label: display name (for people).
        classifier: which trained classifier: ``"plain"``, ``"eq17"``, ``"pgd-at"``, ``"trades"``.
        purifier: the purifier's config (a ``PurifyConfig``, ``ADPConfig`` or ``DiffPureConfig``);
            ``None``: no purifier. The family follows from it (:func:`~pursamere.evaluation.defences.purifier_family`).
        family: needed only without a purifier (undefended, adversarial training, TRADES).
        attacks: the attack roles run at each norm (``{"inf": (Role.BPDA, ...), "2": ...}``), or
            ``None``: every attack of the protocol that applies (the standard rule).
        checks: run the obfuscation checks on this defence.
        examples: draw this defence's example images.
    """

    label: str
    classifier: str = "plain"
    purifier: Optional[object] = None
    family: Optional[Family] = None
    attacks: Optional[dict] = None
    checks: bool = False
    examples: bool = False

    def kind(self) -> Family:
        """The defence's family: given, or read from its purifier config."""
        return Family(self.family) if self.family is not None else config_family(self.purifier)


@dataclass(frozen=True)
class Images:
    """Which test images: the tables' fixed order (``"table"``) or the held-out ``"validation"`` images."""

    which: str = "table"
    n: Optional[int] = None

    def __post_init__(self):
        if self.which not in ("table", "validation"):
            raise ValueError(f"images must be 'table' or 'validation', got {self.which!r}")
        if self.n is not None and (isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1):
            raise ValueError(f"the number of images must be an integer >= 1, got {self.n!r}")


@dataclass(frozen=True)
class Protocol:
    """Everything an evaluation runs; see the module docstring."""

    kind: str  # "tables", "ensemble", "sam-study", "attack-study", "schedule-sweep", "evaluate"
    title: str
    defences: tuple
    attacks: tuple
    threats: tuple
    images: Images
    batch_size: int = 64
    seed: int = 0
    describe: str = ""  # a paragraph for table.md: what ran
    plan: Optional[dict] = None  # the budget it was built from (recorded in the results' meta)
    check_plan: Optional[Plan] = None  # obfuscation checks on the defences marked ``checks``
    diagnostics: bool = False  # score-net diagnostics (Langevin samples, ERE detection AUROC)
    summary: Optional[Callable] = None  # ``summary(results, protocol) -> dict`` written to study.json

    def __post_init__(self):
        labels = [d.label for d in self.defences]
        if len(set(labels)) < len(labels):
            raise ValueError(f"protocol {self.kind!r}: two defences share a label: {labels}")
        names = [a.name for a in self.attacks]
        if len(set(names)) < len(names):
            raise ValueError(f"protocol {self.kind!r}: two attacks share a name {names}: give them different step counts")

    def applies(self, spec_of: dict) -> Callable:
        """``(defence, attack, threat) -> bool`` for the built defences (``spec_of``: defence name → spec)."""
        def rule(defence, attack: AttackSpec, threat: Threat) -> bool:
            # a protocol may only narrow the standard rule (never send an exact attack to a stochastic purifier)
            roles = spec_of[defence.name].attacks
            return standard_applies(defence, attack, threat) and (roles is None or attack.role in roles.get(str(threat.norm), ()))
        return rule


def _roles(linf: tuple, other: tuple = ()) -> dict:
    return {"inf": tuple(linf), "2": tuple(other), "1": tuple(other)}


# ----------------------------------------------------------------------------------------- protocols
def tables(preset, plan: Plan) -> Protocol:
    """The paper's tables in miniature: Table 1 (gPGD per ε_pur), Table 2 (BPDA-det and our exact
    gradient per ε_pur), Table 3 (the long BPDA in three norms at the middle ε_pur), the baselines
    (BPDA+EoT, fixed-seed white-box) and adversarial training."""
    mid, cfg = preset.purify.eps_pur, preset.purify
    g, b, bl, ex = Role.GRAY_BOX, Role.BPDA, Role.BPDA_LONG, Role.EXACT
    defs = [DefenceSpec("undefended", "plain", family=Family.UNDEFENDED, attacks=_roles((b, bl), (bl,)))]
    if preset.adv_train_steps >= 1:  # the competition: adversarially trained classifiers, no purifier
        defs += [DefenceSpec("PGD-AT", "pgd-at", family=Family.ADVERSARIAL_TRAINING, attacks=_roles((b, bl), (bl,))),
                 DefenceSpec("TRADES", "trades", family=Family.TRADES, attacks=_roles((b, bl), (bl,)))]
    for e in preset.eps_pur:  # the paper's method: SAM with ρ = ε_pur/2 in the ball's norm, whatever the preset's ρ
        at_mid = e == mid
        defs.append(DefenceSpec(f"PurSAMERE ε_pur={e:.4g}", "eq17", cfg.replace(eps_pur=e).paper_sam(),
                                attacks=_roles((g, b, bl, ex) if at_mid else (g, b, ex), (bl, ex) if at_mid else ()),
                                checks=at_mid, examples=at_mid))
    defs += [
        DefenceSpec(f"ERE descent (no SAM) ε_pur={mid:.4g}", "eq17", cfg.sam_off(), attacks=_roles((g, b, ex))),
        DefenceSpec("ADP", "plain", preset.adp.replace(fixed_noise=False), attacks=_roles((b,), (b,))),
        DefenceSpec("ADP (fixed seed)", "plain", preset.adp.replace(fixed_noise=True), attacks=_roles((b, ex))),
        DefenceSpec("DiffPure-style", "plain", preset.diffpure.replace(fixed_noise=False), attacks=_roles((b,), (b,))),
        DefenceSpec("DiffPure-style (fixed seed)", "plain", preset.diffpure.replace(fixed_noise=True), attacks=_roles((b, ex))),
    ]
    attacks = (AttackSpec(f"gPGD{plan.gpgd_steps}", gradient="none", steps=plan.gpgd_steps, role=g),
               AttackSpec(f"BPDA{plan.bpda_steps}", gradient="bpda", steps=plan.bpda_steps, eot=plan.eot, role=b),
               AttackSpec(f"BPDA{plan.bpda_long_steps}", gradient="bpda", steps=plan.bpda_long_steps, eot=plan.eot, role=bl),
               AttackSpec(f"exact{plan.exact_steps}", gradient="exact", steps=plan.exact_steps, role=ex))
    threats = tuple(Threat(k, v) for k, v in preset.threats.items())
    describe = (f"Attacks: gPGD{plan.gpgd_steps}, BPDA{plan.bpda_steps}-det, BPDA{plan.bpda_long_steps}-det, exact-gradient "
                f"PGD{plan.exact_steps} through the unrolled purifier, BPDA{plan.bpda_steps}+EoT({plan.eot}) for stochastic "
                "purifiers. Budgets: " + ", ".join(f"ℓ{'∞' if k == 'inf' else k} {v:.4g}" for k, v in preset.threats.items())
                + f". Purifier: K = {cfg.steps} steps, M = {cfg.m}; PurSAMERE rows use the paper's SAM (ρ = ε_pur/2), "
                f"ERE descent has SAM off (the preset's default ρ = {cfg.rho:g}).")
    return Protocol("tables", f"{preset.name}: PurSAMERE and baselines", tuple(defs), attacks, threats,
                    Images("table", plan.n_test), batch_size=plan.batch_size, describe=describe,
                    plan=dataclasses.asdict(plan), check_plan=plan, diagnostics=True)


def ensemble(preset, plan: EnsemblePlan, best: Optional[dict] = None, only: tuple = ()) -> Protocol:
    """Every defence against the standard ensemble at each ℓ∞ budget of ``plan``.

    Undefended, PGD-AT, TRADES; PurSAMERE with the paper's SAM at the preset's ε_pur; ERE descent
    (SAM off); PurSAMERE with ``best`` (overrides of the preset's purifier config chosen by the SAM
    study; left out when it equals one of the two); the best purifier in front of the PGD-AT
    classifier; ADP and DiffPure-style, stochastic and fixed-seed. ``only``: keep the defences
    whose family, classifier or label is listed (:func:`select_defences`).
    """
    cfg = preset.purify
    e = f"ε_pur={cfg.eps_pur:.4g}"
    paper, plain = cfg.paper_sam(), cfg.sam_off()
    defs = [DefenceSpec("undefended", "plain", family=Family.UNDEFENDED)]
    if preset.adv_train_steps >= 1:
        defs += [DefenceSpec("PGD-AT", "pgd-at", family=Family.ADVERSARIAL_TRAINING),
                 DefenceSpec("TRADES", "trades", family=Family.TRADES)]
    defs += [DefenceSpec(f"PurSAMERE ρ=ε_pur/2 {e}", "eq17", paper), DefenceSpec(f"ERE descent (no SAM) {e}", "eq17", plain)]
    best_cfg, best_name = plain, "ERE descent (no SAM)"
    if best:
        best_cfg = cfg.replace(**best)
        if best_cfg not in (paper, plain):
            best_name = "PurSAMERE " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items())
            e = f"ε_pur={best_cfg.eps_pur:.4g}"
            defs.append(DefenceSpec(f"{best_name} {e}", "eq17", best_cfg))
        elif best_cfg == paper:
            best_name = "PurSAMERE ρ=ε_pur/2"
    if preset.adv_train_steps >= 1:
        defs.append(DefenceSpec(f"PGD-AT + {best_name} {e}", "pgd-at", best_cfg))
    defs += [DefenceSpec("ADP", "plain", preset.adp.replace(fixed_noise=False)),
             DefenceSpec("ADP (fixed seed)", "plain", preset.adp.replace(fixed_noise=True)),
             DefenceSpec("DiffPure-style", "plain", preset.diffpure.replace(fixed_noise=False)),
             DefenceSpec("DiffPure-style (fixed seed)", "plain", preset.diffpure.replace(fixed_noise=True))]
    defs = select_defences(defs, only)
    return Protocol("ensemble", f"{preset.name}: the attack ensemble, worst case per image", tuple(defs),
                    suite_then(plan.budget, plan.then), tuple(Threat("inf", x) for x in plan.eps),
                    Images("table", plan.n_test), batch_size=plan.batch_size,
                    plan={**dataclasses.asdict(plan), "best": best or {}})


def then_budgets(then) -> tuple:
    """``then`` as a tuple of budgets: ``None`` → ``()``, one :class:`Budget` → ``(it,)``, a sequence as it is."""
    if then is None:
        return ()
    return (then,) if isinstance(then, Budget) else tuple(then)


def suite_then(budget: Budget, then=None) -> tuple:
    """The standard suite at ``budget``, then (when given) the whole standard suite at ``then``, every attack of it
    cascaded: it runs only on the images no attack of the first suite broke, so a group's worst case is over both
    runs. ``then`` may also be a sequence of budgets, each suite run on what all before it left (``--then-steps
    40,80``: the next rung when the longer suite still breaks images). The step counts in the names keep the
    suites' attacks apart (counts that repeat are refused by :class:`Protocol`)."""
    out = tuple(standard_suite(budget))
    for b in then_budgets(then):
        out += tuple(dataclasses.replace(a, cascade=True) for a in standard_suite(b))
    return out


def select_defences(defs, only) -> list:
    """The specs whose family value, classifier id or label is in ``only`` (all when ``only`` is empty)."""
    if not only:
        return list(defs)
    keep = [d for d in defs if d.kind().value in only or d.classifier in only or d.label in only]
    if not keep:
        known = sorted({d.kind().value for d in defs} | {d.classifier for d in defs})
        raise ValueError(f"no defence matches {list(only)}: give families or classifiers from {known}, or exact labels")
    return keep


# -------------------------------------------------------------------------------------------- studies
def sam_settings(cfg, dim: int) -> dict:
    """The SAM study's grid: name → overrides of the purifier config ``cfg`` (every one says ρ and the σ-tie).

    ℓ2 radii are the ℓ∞ ones times √d (the ℓ2 norm of a vector of d equal entries), so each
    ℓ2 ρ matches an ℓ∞ ρ in size. σ-tied radii: ``ρ_k = c·σ_k`` (ℓ∞) and ``c·√d·σ_k`` (ℓ2, the
    typical length of the noise σ_k z), c ∈ {¼, 1}. M = 1 cannot be antithetic (pairs).
    """
    e, r = cfg.eps_pur, math.sqrt(dim)
    grid = {"SAM off": dict(rho=0.0, rho_sigma=None)}
    for frac, label in ((1 / 8, "ε_pur/8"), (1 / 4, "ε_pur/4"), (1 / 2, "ε_pur/2")):
        grid[f"ℓ∞ ρ={label}"] = dict(rho=e * frac, rho_sigma=None, sam_norm="inf")
    for frac, label in ((1 / 8, "ε_pur/8"), (1 / 4, "ε_pur/4"), (1 / 2, "ε_pur/2")):
        grid[f"ℓ2 ρ=√d·{label}"] = dict(rho=e * frac * r, rho_sigma=None, sam_norm=2)
    for c, label in ((0.25, "σ/4"), (1.0, "σ")):
        grid[f"ℓ∞ ρ={label}"] = dict(rho=0.0, rho_sigma=c, sam_norm="inf")
        grid[f"ℓ2 ρ=√d·{label}"] = dict(rho=0.0, rho_sigma=c * r, sam_norm=2)
    for m in (1, 16):
        anti = dict(m=m, antithetic=m % 2 == 0 and cfg.antithetic)
        grid[f"SAM off, M={m}"] = dict(rho=0.0, rho_sigma=None, **anti)
        grid[f"ℓ∞ ρ=ε_pur/2, M={m}"] = dict(rho=e / 2, rho_sigma=None, sam_norm="inf", **anti)
    return grid


def sam_study(preset, n: Optional[int] = None, only: tuple = (), bpda_steps: int = 10, exact_steps: int = 5,
              partial_last: int = 3) -> Protocol:
    """What SAM does: the grid of :func:`sam_settings` on the validation images, scored by clean
    accuracy and the worst case over BPDA-det, partial unrolling and BPDA→exact (cascaded)."""
    from .studies import summarise_sam

    dim = math.prod(preset.image_shape)
    grid = sam_settings(preset.purify, dim)
    if only:
        unknown = [o for o in only if o not in grid]
        if unknown:
            raise ValueError(f"unknown SAM-study settings {unknown}: choose from {list(grid)}")
        grid = {k: v for k, v in grid.items() if k in only}
    partial_last = min(partial_last, preset.purify.steps)
    bpda = f"BPDA{bpda_steps}"
    attacks = (AttackSpec(bpda, gradient="bpda", steps=bpda_steps),
               AttackSpec(f"partial{partial_last}-margin{bpda_steps}", gradient="exact", steps=bpda_steps,
                          unroll_last=partial_last, loss="margin", cascade=True),
               AttackSpec(f"{bpda}→exact{exact_steps}", gradient="exact", steps=exact_steps, warm_from=bpda, cascade=True))
    defs = tuple(DefenceSpec(name, "eq17", preset.purify.replace(**kw)) for name, kw in grid.items())
    return Protocol("sam-study", f"{preset.name}: the SAM study", defs, attacks, (Threat("inf", preset.threats["inf"]),),
                    Images("validation", n), plan={"settings": grid, "eps_pur": preset.purify.eps_pur, "m": preset.purify.m},
                    summary=summarise_sam)


def attack_study(preset, family: str = "ERE descent", n: Optional[int] = None) -> Protocol:
    """Attack variants compared one to one (every attack on every image, no cascade) on one defence."""
    from .studies import summarise_attacks

    cfgs = {Family.ERE_DESCENT.value: preset.purify.sam_off(), Family.PURSAMERE.value: preset.purify.paper_sam()}
    if family not in cfgs:
        raise ValueError(f"attack study: unknown defence {family!r}, choose from {list(cfgs)}")
    eps, k = preset.threats["inf"], preset.purify.steps
    ks = sorted({min(j, k) for j in (1, 3, 6)})
    v = Role.VARIANT
    attacks = (
        AttackSpec("BPDA10", gradient="bpda", steps=10, role=v), AttackSpec("BPDA20", gradient="bpda", steps=20, role=v),
        AttackSpec("BPDA50", gradient="bpda", steps=50, role=v),
        AttackSpec("BPDA20×3 restarts", gradient="bpda", steps=20, restarts=3, role=v),
        AttackSpec("BPDA20 margin", gradient="bpda", steps=20, loss="margin", role=v),
        AttackSpec("BPDA20 α=ε/8", gradient="bpda", steps=20, step_size=eps / 8, role=v),
        AttackSpec("BPDA20 α=ε/2", gradient="bpda", steps=20, step_size=eps / 2, role=v),
        AttackSpec("exact10", gradient="exact", steps=10, role=v),
        AttackSpec("BPDA20→exact10", gradient="exact", steps=10, warm_from="BPDA20", role=v),
        *[AttackSpec(f"partial{j}-margin20", gradient="exact", steps=20, unroll_last=j, loss="margin", role=v) for j in ks],
        AttackSpec("APGD-CE20", gradient="bpda", kind="apgd-ce", steps=20, role=v),
        AttackSpec("APGD-DLR20", gradient="bpda", kind="apgd-dlr", steps=20, role=v),
        AttackSpec("Square100", gradient="none", kind="square", queries=100, role=v),
    )
    defs = (DefenceSpec(f"{family} ε_pur={preset.purify.eps_pur:.4g}", "eq17", cfgs[family]),)
    return Protocol("attack-study", f"{preset.name}: attacks compared one to one", defs, attacks,
                    (Threat("inf", eps),), Images("validation", n), summary=summarise_attacks)


def schedule_sweep(preset, candidates: dict, n: Optional[int] = None, steps: int = 10) -> Protocol:
    """Purification schedules (name → overrides of the paper-SAM purifier) under BPDA-det on the validation images."""
    from .studies import summarise_sweep

    base = preset.purify.paper_sam()  # the candidates vary the schedule under the paper's SAM, whatever the preset's ρ
    defs = tuple(DefenceSpec(name, "eq17", base.replace(**kw)) for name, kw in candidates.items())
    attacks = (AttackSpec(f"BPDA{steps}", gradient="bpda", steps=steps),)
    return Protocol("schedule-sweep", f"{preset.name}: purification schedules", defs, attacks,
                    (Threat("inf", preset.threats["inf"]),), Images("validation", n),
                    plan={"candidates": candidates, "eps_pur": base.eps_pur}, summary=summarise_sweep)


def budget_at(steps: int, restarts: int = 1) -> Budget:
    """The standard ensemble scaled to ``steps`` (PGD, APGD and partial unrolling), ``steps/2`` exact-gradient
    steps (targeted APGD on the exact gradient runs at ``steps/2`` and again at ``steps``), ``restarts`` APGD
    restarts and ``5·steps`` Square queries: one point of the convergence curve."""
    return Budget(gpgd_steps=steps, bpda_steps=steps, exact_steps=max(1, steps // 2), partial_steps=steps,
                  apgd_steps=steps, apgd_restarts=restarts, square_queries=5 * steps)


#: The convergence curve's budgets (steps, restarts): each doubles the one before it in one direction.
CONVERGENCE_LADDER = ((10, 1), (20, 1), (40, 1), (80, 1), (160, 1), (80, 2), (160, 2))


def convergence(preset, steps: int, restarts: int = 1, n: Optional[int] = None, eps: Optional[float] = None,
                seed: int = 0) -> Protocol:
    """One point of the convergence curve: the whole standard ensemble at :func:`budget_at` against ERE descent
    (the preset's best purifier) and PGD-AT, on the validation images at the preset's ℓ∞ budget.

    ``seed`` (the run's seed, mixed into every image's random start): the same budget started elsewhere, to
    measure how much of a doubling's effect is only a new draw of starting points."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    cfg = preset.purify
    defs = [DefenceSpec(f"ERE descent (no SAM) ε_pur={cfg.eps_pur:.4g}", "eq17", cfg.sam_off())]
    if preset.adv_train_steps >= 1:
        defs.append(DefenceSpec("PGD-AT", "pgd-at", family=Family.ADVERSARIAL_TRAINING))
    budget = budget_at(steps, restarts)
    plan = {"steps": steps, "restarts": restarts, "budget": dataclasses.asdict(budget)}
    if seed:
        plan["seed"] = seed  # seed 0 is left out: the plans recorded before seeds were studied stay as they were
    return Protocol("convergence", f"{preset.name}: the ensemble at {steps} steps × {restarts} restart(s)"
                    + (f", seed {seed}" if seed else ""), tuple(defs),
                    tuple(standard_suite(budget)), (Threat("inf", eps or preset.threats["inf"]),), Images("validation", n),
                    seed=seed, plan=plan,
                    describe=f"The standard ensemble at {steps} steps and {restarts} APGD restart(s) (exact gradient "
                             f"{max(1, steps // 2)} steps" + (f", then targeted APGD on it at {steps}" if steps > 1 else "")
                             + f"; Square {5 * steps} queries).")


#: Named single attacks for ``pursamere evaluate`` ("-det": the purifier's seed is fixed and known).
NAMED_ATTACKS = {
    "gpgd20": AttackSpec("gpgd20", gradient="none", steps=20),
    "bpda20-det": AttackSpec("bpda20-det", gradient="bpda", steps=20),
    "bpda200-det": AttackSpec("bpda200-det", gradient="bpda", steps=200, role=Role.BPDA_LONG),
    "exact20": AttackSpec("exact20", gradient="exact", steps=20),
    "bpda20-eot": AttackSpec("bpda20-eot", gradient="bpda", steps=20, eot=8),
    "fgsm-bpda": AttackSpec("fgsm-bpda", gradient="bpda", steps=1),
    "square": AttackSpec("square", gradient="none", kind="square", queries=1000),
    "apgd-ce": AttackSpec("apgd-ce", gradient="bpda", kind="apgd-ce", steps=50),
    "apgd-dlr": AttackSpec("apgd-dlr", gradient="bpda", kind="apgd-dlr", steps=50),
}


def custom(preset, attacks: tuple, threats: tuple, n: Optional[int] = None, only: tuple = ()) -> Protocol:
    """The tables' defences (filtered by family, classifier or label) × the given attacks × threats, each
    attack run where it applies (:func:`pursamere.evaluation.suite.applies`)."""
    defs = [dataclasses.replace(d, attacks=None, checks=False, examples=False)
            for d in tables(preset, preset.full).defences]
    return Protocol("evaluate", f"{preset.name}: chosen defences", tuple(select_defences(defs, only)), tuple(attacks),
                    tuple(threats), Images("table", n))
