"""Attacks as data: :class:`AttackSpec` with its :class:`Role`, the standard ensemble, and which attack applies.

AutoAttack's way of counting (Croce & Hein 2020): an image is robust only if it survives EVERY
attack of the suite, and that worst case is the headline number. Which attacks apply is decided on
the defence's structured fields (purifier or not, deterministic or not, what its purifier supports):

================================  ==============================================================
defence                           the standard ensemble (in order; † = cascaded, survivors only)
================================  ==============================================================
no purifier (undefended, PGD-AT,  PGD (white-box), APGD-CE †, APGD-DLR †, APGD-T †, Square †
TRADES)
deterministic purifier with       gPGD (gray-box), BPDA-det, APGD-CE †, APGD-DLR †, APGD-T †
exact gradients (PurSAMERE, ERE   (all three through BPDA), exact †, APGD-CE→exact † (the exact
descent, fixed-seed baselines)    gradient started where APGD-CE stopped), partial unrolling †
                                  (exact through the last k steps, BPDA before; margin loss) where
                                  the purifier supports it, Square †, then APGD on the exact
                                  gradient: APGD-CE→exact-APGD-CE † (from APGD-CE's end points),
                                  exact-APGD-T † and exact-APGD-T † again at APGD's step count
deterministic, no ``unrolled``    gPGD, BPDA-det, APGD-CE †, APGD-DLR †, APGD-T †, Square †
stochastic purifier               BPDA+EoT, APGD-CE+EoT †, APGD-DLR+EoT †, APGD-T+EoT †, Square †
================================  ==============================================================

At ℓ1 Square does not apply (it searches ℓ∞ and ℓ2 balls); APGD runs there as ℓ1-APGD (Croce & Hein
2021), and the whole suite runs at twice the budget of ℓ∞ and ℓ2 (:func:`ensemble_suite`). BPDA-det
and gPGD run on every clean-correct image, so their columns are ordinary per-attack
accuracies; the cascaded columns are cumulative (the worst case so far), as AutoAttack prints
them. Cascading never changes the worst case: an image broken earlier is broken whatever runs
after it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from .attacks import Threat, default_step_size
from .defended import GRADIENTS, supports_exact_gradient, supports_partial_unrolling

__all__ = ["Role", "AttackSpec", "KINDS", "Budget", "standard_suite", "ensemble_suite", "threat_budget", "applies"]

#: Attack kinds: PGD, APGD with CE, DLR or targeted DLR loss (over the top classes), and the gradient-free
#: Square attack — all ours, with per-image seeded randomness (:mod:`pursamere.evaluation.apgd`, ``square``).
KINDS = ("pgd", "square", "apgd-ce", "apgd-dlr", "apgd-t")


class Role(str, Enum):
    """What an attack is for in its suite; tables and comparisons select attacks by role."""

    GRAY_BOX = "gray-box"  # PGD on the classifier alone, purifier applied afterwards (gPGD, Table 1)
    BPDA = "bpda"  # straight-through PGD (Table 2's BPDA-det; +EoT against stochastic purifiers)
    BPDA_LONG = "bpda-long"  # the long BPDA of Table 3 (BPDA200 in the paper)
    EXACT = "exact"  # exact gradient through the unrolled purifier, random start
    WARM_EXACT = "bpda→exact"  # exact gradient started from BPDA's end points
    PARTIAL = "partial unrolling"  # exact through the purifier's last k steps, BPDA before
    APGD = "apgd"  # APGD-CE, APGD-DLR and APGD-T (targeted DLR), ours (pursamere.evaluation.apgd)
    SQUARE = "square"  # gradient-free
    VARIANT = "variant"  # one of several variants compared one to one (the attack study)

    @classmethod
    def of(cls, spec: "AttackSpec") -> "Role":
        """The role an attack has when its suite does not say: read from its settings."""
        if spec.kind == "square":
            return cls.SQUARE
        if spec.kind.startswith("apgd"):
            return cls.APGD
        if spec.gradient == "none":
            return cls.GRAY_BOX
        if spec.gradient == "bpda":
            return cls.BPDA
        if spec.unroll_last is not None:
            return cls.PARTIAL
        return cls.WARM_EXACT if spec.warm_from is not None else cls.EXACT


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite.

    ``gradient``: how gradients cross the purifier (``"none"`` gray-box, ``"bpda"``, ``"exact"``);
    ``kind``: ``"pgd"``, ``"square"`` (gradient-free), ``"apgd-ce"``/``"apgd-dlr"``, or ``"apgd-t"``
    (targeted DLR against each of the ``targets`` most likely wrong classes in turn).
    ``eot`` is used only against stochastic defences (it is 1 otherwise). ``role``: what the
    attack is for in its suite (read from the settings when not given; see :class:`Role`).

    Adaptive additions:

    - ``unroll_last=k`` with ``gradient="exact"``: partial unrolling, exact gradients through the
      purifier's last k steps and straight-through for the rest (``0`` = BPDA, ``None`` = all).
    - ``warm_from="NAME"``: PGD starts from the end points of the attack NAME of the same suite
      (for example the exact gradient started where BPDA stopped) instead of a random start.
    - ``cascade=True``: AutoAttack's way of counting — the attack runs only on the images that
      survived every attack before it in the suite, and its row records the CUMULATIVE
      survival (robust to this attack and all earlier ones).
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
    targets: int = 3  # APGD-T only: the most likely wrong classes attacked in turn (AutoAttack: 9 on CIFAR-10)
    unroll_last: Optional[int] = None
    warm_from: Optional[str] = None
    cascade: bool = False
    role: Optional[Role] = None
    norms: Optional[tuple] = None  # the threat norms it runs at ("inf", "2", "1"); None: every norm

    def __post_init__(self):
        if self.norms is not None:
            norms = tuple(str(n) for n in self.norms)
            if not norms or not set(norms) <= {"inf", "2", "1"}:
                raise ValueError(f"AttackSpec {self.name!r}: norms must be some of 'inf', '2', '1', got {self.norms!r}")
            object.__setattr__(self, "norms", norms)
        if self.gradient not in GRADIENTS:
            raise ValueError(f"AttackSpec {self.name!r}: unknown gradient {self.gradient!r}, use one of {GRADIENTS}")
        if self.kind not in KINDS:
            raise ValueError(f"AttackSpec {self.name!r}: unknown kind {self.kind!r}, use one of {KINDS}")
        for k in ("steps", "eot", "restarts", "queries", "targets"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"AttackSpec {self.name!r}: {k} must be an integer >= 1, got {v!r}")
        if self.unroll_last is not None and (self.gradient != "exact" or self.kind != "pgd"):
            raise ValueError(f"AttackSpec {self.name!r}: unroll_last needs kind='pgd' and gradient='exact'")
        if self.warm_from is not None and self.kind not in ("pgd", "apgd-ce", "apgd-dlr"):
            raise ValueError(f"AttackSpec {self.name!r}: warm_from needs kind='pgd' or an untargeted APGD")
        if self.warm_from == self.name:
            raise ValueError(f"AttackSpec {self.name!r}: cannot start from its own end points")
        # a setting the kind would ignore is refused, not dropped: the row would claim an attack that never ran
        ignored = {"queries": (self.queries != 1000, "square"), "targets": (self.targets != 3, "apgd-t"),
                   "loss": (self.loss != "ce", "pgd"), "step_size": (self.step_size is not None, "pgd")}
        for field, (given, kind) in ignored.items():
            if given and self.kind != kind:
                raise ValueError(f"AttackSpec {self.name!r}: {field} applies to kind={kind!r} only, not {self.kind!r}")
        if self.kind == "square" and (self.gradient != "none" or self.restarts != 1):
            raise ValueError(f"AttackSpec {self.name!r}: Square is gradient-free with one run: "
                             "use gradient='none' and restarts=1")
        if self.kind == "apgd-t" and self.restarts != 1:
            raise ValueError(f"AttackSpec {self.name!r}: APGD-T runs once per target class; restarts must be 1")
        object.__setattr__(self, "role", Role.of(self) if self.role is None else Role(self.role))

    def settings(self, threat: Threat) -> dict:
        """What the attack does at ``threat`` (its role is identity, not a setting)."""
        d = dataclasses.asdict(self)
        d.pop("role")
        d.pop("norms")  # where it runs, not how: the threat is part of every row's key
        if self.kind == "pgd":
            d["step_size"] = self.step_size if self.step_size is not None else default_step_size(threat, self.steps)
        return d


@dataclass(frozen=True)
class Budget:
    """Step counts of the standard ensemble (defaults: the digits ensemble's first budget; the converged
    budget of each preset is chosen from chapter 7's convergence curve)."""

    gpgd_steps: int = 20
    bpda_steps: int = 20  # PGD through BPDA, and each APGD run
    exact_steps: int = 10  # exact-gradient PGD, from a random start and from APGD-CE's end points
    partial_last: int = 3  # purifier steps differentiated exactly in the partial-unrolling attack
    partial_steps: int = 20
    apgd_steps: int = 20
    apgd_restarts: int = 1  # random restarts of APGD-CE and APGD-DLR
    apgd_targets: int = 3  # APGD-T: the most likely wrong classes, attacked in turn
    square_queries: int = 100
    eot: int = 4  # EoT samples per step against stochastic purifiers

    def doubled(self) -> "Budget":
        """Twice every step count, query budget and restart count (the ``--strong`` convergence check)."""
        keep = {"partial_last", "apgd_targets", "eot"}
        return Budget(**{k: v if k in keep else 2 * v for k, v in dataclasses.asdict(self).items()})


def standard_suite(budget: Budget = Budget(), norms: Optional[tuple] = None) -> list[AttackSpec]:
    """The standard ensemble, in the order it runs (see the module docstring), at the norms ``norms``
    (``None``: every norm; :func:`ensemble_suite` gives ℓ1 its own budget).

    Its strongest path on a deterministic purifier: APGD through BPDA, then the exact gradient
    started from APGD-CE's end points on the images that survived everything before it. The three APGD
    attacks on the exact gradient that end the suite (APGD-CE from APGD-CE's end points, targeted APGD, and
    targeted APGD again at the full step count) were added when the convergence ladder of book chapter 7 showed
    that the 80-step suite left images robust that a doubled budget broke; they come last so that rows recorded
    before them stay reusable. The targeted one runs a second time at APGD's full step count (``exact-APGD-T{apgd_steps}-long``; not when the
    exact-gradient budget is already that long), added when the ladder showed that the targeted attack's step
    count, not its number of target classes, decided what it broke.
    """
    suite = _suite(budget)
    return suite if norms is None else [dataclasses.replace(a, norms=tuple(norms)) for a in suite]


def threat_budget(budget: Budget, norm) -> Budget:
    """The budget the ensemble runs at one threat norm: ``budget`` at ℓ∞ and ℓ2, ``budget.doubled()`` at ℓ1.

    Measured on the CIFAR-10 table's adversarially trained classifier at ℓ1 12 (n = 256, book chapter 6): the
    20-step suite had not converged (doubling it broke 5 more images, 2 in 100) while doubling 40 steps × 2
    restarts moved 1 image (0.4 in 100); at ℓ∞ 8/255 and ℓ2 0.5 doubling the 20-step suite moved no image.
    ℓ1-APGD spends 60% of its steps on the 3ε and 2ε stages, and its sparse steps move few coordinates at a time.
    """
    return budget.doubled() if str(norm) == "1" else budget


def ensemble_suite(budget: Budget, threats) -> list[AttackSpec]:
    """The standard ensemble for ``threats``, each norm at :func:`threat_budget`: the ℓ∞/ℓ2 attacks are the
    ones of :func:`standard_suite` (rows made before ℓ1 had its own budget stay reusable), the ℓ1 ones run
    only at ℓ1 and carry the doubled counts in their names (BPDA40, APGD-CE40×2, …)."""
    norms = sorted({str(t.norm) for t in threats})
    if "1" not in norms:
        return standard_suite(budget)
    rest = tuple(n for n in norms if n != "1")
    return (standard_suite(budget, norms=rest) if rest else []) + standard_suite(threat_budget(budget, 1), norms=("1",))


def _suite(b: Budget) -> list[AttackSpec]:
    """The ensemble's attacks at budget ``b``, named by their counts."""
    apgd_ce = f"APGD-CE{b.apgd_steps}" + (f"×{b.apgd_restarts}" if b.apgd_restarts > 1 else "")
    apgd_dlr = f"APGD-DLR{b.apgd_steps}" + (f"×{b.apgd_restarts}" if b.apgd_restarts > 1 else "")
    return [
        AttackSpec(f"gPGD{b.gpgd_steps}", gradient="none", steps=b.gpgd_steps),
        AttackSpec(f"BPDA{b.bpda_steps}", gradient="bpda", steps=b.bpda_steps, eot=b.eot),
        AttackSpec(apgd_ce, gradient="bpda", kind="apgd-ce", steps=b.apgd_steps, restarts=b.apgd_restarts, eot=b.eot,
                   cascade=True),
        AttackSpec(apgd_dlr, gradient="bpda", kind="apgd-dlr", steps=b.apgd_steps, restarts=b.apgd_restarts, eot=b.eot,
                   cascade=True),
        AttackSpec(f"APGD-T{b.apgd_steps}", gradient="bpda", kind="apgd-t", steps=b.apgd_steps, targets=b.apgd_targets,
                   eot=b.eot, cascade=True),
        AttackSpec(f"exact{b.exact_steps}", gradient="exact", steps=b.exact_steps, cascade=True),
        AttackSpec(f"{apgd_ce}→exact{b.exact_steps}", gradient="exact", steps=b.exact_steps, warm_from=apgd_ce,
                   cascade=True),
        AttackSpec(f"partial{b.partial_last}-margin{b.partial_steps}", gradient="exact", steps=b.partial_steps,
                   unroll_last=b.partial_last, loss="margin", cascade=True),
        AttackSpec(f"Square{b.square_queries}", gradient="none", kind="square", queries=b.square_queries, cascade=True),
        # APGD on the exact gradient (added after the 80-step suite left images that these break, chapter 7): after
        # everything else, so the rows recorded before them keep their cascade and stay reusable
        AttackSpec(f"{apgd_ce}→exact-APGD-CE{b.exact_steps}" + (f"×{b.apgd_restarts}" if b.apgd_restarts > 1 else ""),
                   gradient="exact", kind="apgd-ce", steps=b.exact_steps, restarts=b.apgd_restarts, warm_from=apgd_ce,
                   cascade=True, role=Role.WARM_EXACT),
        AttackSpec(f"exact-APGD-T{b.exact_steps}", gradient="exact", kind="apgd-t", steps=b.exact_steps,
                   targets=b.apgd_targets, cascade=True, role=Role.EXACT),
    ] + ([
        # targeted APGD on the exact gradient again, at APGD's full step count (a second start with a longer
        # schedule): on the 17 validation images the 80-step suite left, it broke the 2 that the 160-step suite and
        # two other seeds broke (160 steps broke the same 2), where 9 targets at 40 steps broke 1 (chapter 7).
        # "-long": ℓ1's doubled budget has an exact-APGD-T of this step count already (ensemble_suite)
        AttackSpec(f"exact-APGD-T{b.apgd_steps}-long", gradient="exact", kind="apgd-t", steps=b.apgd_steps,
                   targets=b.apgd_targets, cascade=True, role=Role.EXACT),
    ] if b.apgd_steps > b.exact_steps else [])


def applies(defence, spec: AttackSpec, threat: Optional[Threat] = None) -> bool:
    """Whether ``spec`` belongs to ``defence``'s standard suite (the table of the module docstring).

    Decided on the defence's fields: purifier or not, deterministic or not, and what its purifier
    supports (exact gradients through ``unrolled``, partial unrolling).
    """
    if spec.norms is not None and threat is not None and str(threat.norm) not in spec.norms:
        return False  # an attack of another norm's budget (ensemble_suite)
    if spec.kind == "square" and threat is not None and threat.norm == 1:
        return False  # Square is an ℓ∞ / ℓ2 attack (Andriushchenko et al. 2020); ℓ1 relies on PGD and APGD
    if not defence.has_purifier:  # no purifier: every gradient rule is the white-box one
        return spec.gradient == "bpda" or spec.kind == "square"
    if defence.stochastic:
        return spec.gradient == "bpda" or spec.kind == "square"
    if spec.gradient == "exact" and not supports_exact_gradient(defence.purifier):
        return False
    if spec.unroll_last is not None:
        return supports_partial_unrolling(defence.purifier)
    return True
