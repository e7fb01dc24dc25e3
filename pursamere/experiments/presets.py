"""Named experiment presets: frozen dataclasses, one per data set (``TINY`` for tests).

A preset fixes everything an experiment needs: data, score net and its σ ladder, classifier,
purifier, baselines, threat budgets and the attack plan. Values marked "paper" are the
paper's CIFAR-10 settings; "ours" were chosen by the documented calibration and sweeps (the
book's digits chapter and ``benchmarks/``), where the paper is silent or lost its value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from ..method.baselines import ADPConfig, DiffPureConfig
from ..method.nets import SCORE_CIFAR10, SCORE_DIGITS, SCORE_TINY, ScoreNetConfig
from ..method.purify import PurifyConfig
from ..evaluation.suite import Budget
from ..method.train import ClassifierTrainConfig, ScoreTrainConfig
from .protocols import EnsemblePlan, Plan, budget_at

__all__ = ["Preset", "DIGITS", "CIFAR10", "CIFAR10_NCSNV2", "TINY", "PRESETS", "get_preset", "ncsnv2_gamma", "ncsnv2_ladder"]


def ncsnv2_gamma(dim: int) -> float:
    """NCSNv2's ladder ratio γ for data of dimension ``dim`` (Song & Ermon 2020, technique 2).

    γ solves ``Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) = 1/2`` so neighbouring noise levels
    overlap; found by bisection.
    """
    def phi(t):
        return 0.5 * (1 + math.erf(t / math.sqrt(2)))

    def f(g):
        a = math.sqrt(2 * dim) * (g - 1)
        return phi(a + 3 * g) - phi(a - 3 * g) - 0.5

    lo, hi = 1.0 + 1e-9, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def ncsnv2_ladder(data: torch.Tensor, sigma_last: float) -> tuple[float, float, int]:
    """``(σ_1, σ_L, L)`` by NCSNv2's rules: σ_1 = the largest pairwise distance, ratio :func:`ncsnv2_gamma`."""
    flat = data.flatten(1).double()
    sigma_first = float(torch.cdist(flat, flat).max())
    gamma = ncsnv2_gamma(flat.shape[1])
    n = int(math.ceil(math.log(sigma_first / sigma_last) / math.log(gamma))) + 1
    return sigma_first, sigma_last, n


@dataclass(frozen=True)
class Preset:
    """Everything an experiment needs. See the module docstring for "paper" versus "ours"."""

    name: str
    data: str  # "digits" | "cifar10" | "cifar10-jpeg"
    data_seed: int
    score_net: ScoreNetConfig
    sigma_first: float  # σ_1 of the training ladder (NCSNv2: largest pairwise distance)
    sigma_last: float  # σ_L
    n_sigmas: int  # L
    score_train: ScoreTrainConfig
    classifier: str  # "smallcnn" | "wrn-28-10" | "wrn-10-1"
    classifier_train: ClassifierTrainConfig
    purify: PurifyConfig  # Algorithm 1 at the middle ε_pur; rows vary ε_pur
    eps_pur: tuple  # Table 1/2 rows: purification radii
    threats: dict  # norm → ε of the attacks (paper: ℓ∞ 8/255, ℓ2 0.5, ℓ1 12)
    adp: ADPConfig
    diffpure: DiffPureConfig
    demo: Plan = field(default_factory=Plan)  # the budgeted tables of `pursamere demo`
    full: Plan = field(default_factory=Plan)  # the tables of `pursamere reproduce`
    ensemble: EnsemblePlan = field(default_factory=EnsemblePlan)  # `pursamere ensemble`
    adv_train_steps: int = 7  # PGD steps of the adversarially trained baselines (Madry, TRADES); 0: none
    trades_beta: float = 6.0  # TRADES' β (Zhang et al. 2019's value)
    train_fraction_purified: float = 1.0  # share of the training set purified for eq. 17
    validation_size: int = 64  # test images set aside for tuning sweeps, never in the tables
    train_limit_per_class: int | None = None  # CPU-sized subsets of large data sets (None: all)
    test_limit_per_class: int | None = None
    models: str = "trained"  # "trained" here (or shipped); "user": the official NCSNv2 + your classifier, given by path
    ncsnv2_config: str = "cifar10"  # models="user": the official config the NCSNv2 checkpoint was trained with

    @property
    def image_shape(self) -> tuple:
        """``(C, H, W)`` of one image."""
        return tuple(self.score_net.image_shape)

    def sigmas(self) -> torch.Tensor:
        from ..method.scores import sigma_ladder

        return sigma_ladder(self.sigma_first, self.sigma_last, self.n_sigmas)

    def replace(self, **kw) -> "Preset":
        return replace(self, **kw)


# ------------------------------------------------------------------------------------ digits
# σ ladder: σ_1 = 4.8 is the largest pairwise distance of the digits training set (NCSNv2 rule 1),
# γ = ncsnv2_gamma(64) ≈ 1.36 gives 22 levels down to σ_L = 0.01 (rule 2).
# Budgets: calibrated ONCE (2026-11-25, 300 test images, plain SmallCNN at 98.7% clean, PGD-20):
#   ℓ∞ ε = 0.05 / 0.10 / 0.15 / 0.20 → 89.7 / 56.0 / 18.0 / 2.7% — 0.20 is the smallest grid value ≤ 10%;
#   ℓ2 ε = 0.5 / 1.0 / 1.5 → 58.7 / 2.7 / 0.0% — 1.0 hurts as much as ℓ∞ 0.20;
#   ℓ1 ε = 3 / 6 / 9 → 2.3 / 0 / 0% — 3.0.
# ε_pur = 1×, 1.5×, 2× the ℓ∞ budget, as the paper's 8, 12, 16 /255 against 8/255.
DIGITS = Preset(
    name="digits", data="digits", data_seed=0,
    score_net=SCORE_DIGITS,
    sigma_first=4.81, sigma_last=0.01, n_sigmas=22,
    score_train=ScoreTrainConfig(steps=1500, batch_size=128, lr=2e-3, ema_rate=0.995, checkpoint_every=250),
    classifier="smallcnn",
    classifier_train=ClassifierTrainConfig(epochs=15, batch_size=64, lr=2e-3),
    # schedule: candidate H of scripts/sweep_digits_schedule.py (best BPDA-det accuracy with SAM on).
    # SAM OFF (ρ = 0) and M = 4: chosen by the SAM study (`pursamere study sam`, book chapter 7;
    # 64 validation images, worst case over BPDA10, partial unrolling and BPDA→exact at ℓ∞ 0.2):
    # SAM off 57.8%; the best SAM setting (ℓ2, ρ = √d·ε_pur/8) 60.9%, 3 images saved vs 1 lost,
    # sign test p = 0.63 — not better, at twice the cost; every larger ρ, and ρ tied to σ, was worse
    # (ℓ∞ ρ = ε_pur/2, the paper's: 4.7%); M = 16 gave 57.8% as well, M = 1 28.1%. The tables still
    # carry the paper's SAM (ρ = ε_pur/2) as "PurSAMERE" rows.
    purify=PurifyConfig(eps_pur=0.3, norm="inf", rho=0.0, m=4, antithetic=True, sigma_max=0.3, sigma_min=0.02,
                        n_levels=12, steps_per_level=1, lr_max=0.08, lr_min=0.01, seed=0),
    eps_pur=(0.2, 0.3, 0.4),
    threats={"inf": 0.2, 2: 1.0, 1: 3.0},
    adp=ADPConfig(sigma_noise=0.25, steps=10, sigma_fix=0.02, n_runs=4),
    diffpure=DiffPureConfig(sigma_min=0.02, n_levels=20),
    # demo: sized for ≤ 15 min on 2 cores from nothing (one purification ≈ 50 score passes per image)
    demo=Plan(n_test=32, gpgd_steps=20, bpda_steps=10, bpda_long_steps=20, exact_steps=5, eot=4, n_check=12,
              check_steps=5, square_queries=60, check_gradients=("bpda",)),
    full=Plan(n_test=None),
    # `pursamere ensemble` and `evaluate --purifier`: 80 steps × 1 restart, where chapter 7's convergence ladder
    # settles (its 20-step tables, the n = 64 and n = 192 ones, were recorded with `--steps 20`)
    ensemble=EnsemblePlan(budget=budget_at(80, 1)),
)

# ----------------------------------------------------------------------------------- CIFAR-10
# The paper's settings (method.md): ℓ∞ 8/255, ℓ2 0.5, ℓ1 12; ε_pur ∈ {8, 12, 16}/255; ρ = ε_pur/2;
# M = 4; σ ladder 50 → 0.01 over 232 levels; WRN-28-10. Purification schedule: ours.
CIFAR10 = Preset(
    name="cifar10", data="cifar10", data_seed=0,
    score_net=SCORE_CIFAR10, sigma_first=50.0, sigma_last=0.01, n_sigmas=232,
    score_train=ScoreTrainConfig(steps=300_000, batch_size=128, lr=1e-4, ema_rate=0.999, checkpoint_every=5000),
    classifier="wrn-28-10",
    classifier_train=ClassifierTrainConfig(epochs=100, batch_size=128, lr=1e-3),
    purify=PurifyConfig(eps_pur=12 / 255, norm="inf", m=4, antithetic=True, sigma_max=0.25, sigma_min=0.01,
                        n_levels=10, steps_per_level=3, lr_max=0.01, lr_min=0.001, seed=0),
    eps_pur=(8 / 255, 12 / 255, 16 / 255),
    threats={"inf": 8 / 255, 2: 0.5, 1: 12.0},
    adp=ADPConfig(),
    diffpure=DiffPureConfig(),
    demo=Plan(n_test=256, bpda_long_steps=50, exact_steps=10, eot=4),
    full=Plan(n_test=None),
)

# CIFAR-10 (JPEG) at a CPU-affordable size: the real images of ../shared/data/cifar10-jpeg, a stated
# subset (500 train / 20 test images per class), a small score net and classifier, short attacks.
# Numbers from it are labelled "CIFAR-10 (JPEG)" and are NOT comparable with the paper's.
CIFAR10_JPEG_CPU = replace(
    CIFAR10, name="cifar10-jpeg-cpu", data="cifar10-jpeg",
    score_net=ScoreNetConfig((3, 32, 32), (32, 64, 64), 1, 8), sigma_first=50.0, sigma_last=0.01, n_sigmas=60,
    score_train=ScoreTrainConfig(steps=800, batch_size=32, lr=1e-3, ema_rate=0.99, checkpoint_every=200),
    classifier="smallcnn", classifier_train=ClassifierTrainConfig(epochs=15, batch_size=128, lr=2e-3),
    purify=PurifyConfig(eps_pur=12 / 255, norm="inf", m=4, antithetic=True, sigma_max=0.25, sigma_min=0.01,
                        n_levels=6, steps_per_level=1, lr_max=0.01, lr_min=0.002, seed=0),
    eps_pur=(12 / 255,),  # one radius: each one costs a full set of rows on a CPU
    adp=ADPConfig(steps=5, n_runs=2), diffpure=DiffPureConfig(n_levels=20),
    # the CPU demo skips the obfuscation checks (≈ 80 purifications per image); the full plan runs them
    demo=Plan(n_test=16, gpgd_steps=10, bpda_steps=5, bpda_long_steps=10, exact_steps=2, eot=2, n_check=16,
              check_steps=3, square_queries=50, check_gradients=(), batch_size=32),
    full=Plan(n_test=200, bpda_long_steps=50, exact_steps=5, eot=4, batch_size=32),
    train_fraction_purified=0.05, train_limit_per_class=500, test_limit_per_class=20,
)

# The paper's own models: the official NCSNv2 CIFAR-10 checkpoint and YOUR classifier, both by path
# (`--score-checkpoint`, `--classifier`; nothing is trained or downloaded), at the paper's settings:
# ε_pur 8/12/16 /255, ρ = ε_pur/2, M = 4 i.i.d. draws, ℓ∞ 8/255, ℓ2 0.5, ℓ1 12, gPGD20 / BPDA20 / BPDA200.
# The purifier rows sit in front of your classifier (the paper's eq.-17 classifier was not released).
CIFAR10_NCSNV2 = replace(
    CIFAR10, name="cifar10-ncsnv2", models="user", ncsnv2_config="cifar10", adv_train_steps=0,
    purify=CIFAR10.purify.replace(antithetic=False, rho=6 / 255),
    demo=Plan(n_test=256, bpda_long_steps=50, exact_steps=10, eot=4), full=Plan(n_test=1000),
)

# CIFAR-10 trained on a CPU (issue 13): all 50,000 JPEG training images, an airbench-style classifier,
# FGSM-RS adversarial training and a 0.70M-parameter score net on a σ ladder focused on purification's
# range (0.5 → 0.01, 20 levels), all trained by scripts/train_cifar10.py and SHIPPED (weights/cifar10/):
# this preset never trains, it loads them. Purification schedule: the sweep's (cifar10_cpu.PURIFY);
# attacks: the standard ensemble at the paper's step counts (gPGD20, BPDA20, APGD20; exact 10 ours).
def _cifar10_cpu() -> Preset:
    from . import cifar10_cpu as C

    v = C.CIFAR10_CPU
    return replace(
        CIFAR10, name=v.name, data=v.data, models="shipped", score_net=v.score_net, sigma_first=v.sigma_first,
        sigma_last=v.sigma_last, n_sigmas=v.n_sigmas, score_train=v.score_train, classifier="fastcifar",
        purify=v.purify, eps_pur=v.eps_pur, threats={"inf": 8 / 255, 2: 0.5, 1: 12.0}, adp=v.adp, diffpure=v.diffpure,
        adv_train_steps=0, validation_size=v.validation_size, train_fraction_purified=v.train_fraction_purified,
        ensemble=EnsemblePlan(n_test=256, eps=(8 / 255,), batch_size=256,
                              budget=Budget(gpgd_steps=20, bpda_steps=20, exact_steps=10, partial_last=3, partial_steps=20,
                                            apgd_steps=20, square_queries=100, eot=4)),
        # `pursamere demo --preset cifar10-cpu`: 8 images, short attacks, ℓ∞ only, no checks (see cli.cmd_demo)
        demo=Plan(n_test=8, gpgd_steps=10, bpda_steps=5, bpda_long_steps=10, exact_steps=2, eot=2, n_check=8,
                  check_steps=3, square_queries=10, check_gradients=(), batch_size=8),
        full=Plan(n_test=256, n_check=32, check_steps=10, check_gradients=("bpda", "exact"), square_queries=100,
                  batch_size=256))


CIFAR10_CPU = _cifar10_cpu()

# --------------------------------------------------------------------------------------- tests
TINY = Preset(
    name="tiny", data="digits", data_seed=0,
    score_net=SCORE_TINY, sigma_first=4.8, sigma_last=0.02, n_sigmas=8,
    score_train=ScoreTrainConfig(steps=30, batch_size=32, lr=2e-3, ema_rate=0.9, checkpoint_every=10),
    classifier="smallcnn",
    classifier_train=ClassifierTrainConfig(epochs=2, batch_size=128, lr=3e-3),
    purify=PurifyConfig(eps_pur=0.15, norm="inf", m=2, antithetic=True, sigma_max=0.3, sigma_min=0.05,
                        n_levels=2, steps_per_level=1, lr_max=0.04, lr_min=0.01),
    eps_pur=(0.15, 0.3),
    threats={"inf": 0.15, 2: 1.0, 1: 6.0},
    adp=ADPConfig(steps=2, sigma_fix=0.05, n_runs=2),
    diffpure=DiffPureConfig(sigma_min=0.05, n_levels=3),
    demo=Plan(n_test=12, gpgd_steps=3, bpda_steps=2, bpda_long_steps=3, exact_steps=1, eot=2, n_check=8,
              check_steps=2, square_queries=20, batch_size=16),
    full=Plan(n_test=24, gpgd_steps=3, bpda_steps=2, bpda_long_steps=3, exact_steps=1, eot=2, n_check=8,
              check_steps=2, square_queries=20, batch_size=16),
    train_fraction_purified=0.1,
    ensemble=EnsemblePlan(n_test=12, eps=(0.1, 0.2), batch_size=8,
                          budget=Budget(gpgd_steps=2, bpda_steps=2, exact_steps=1, partial_last=1, partial_steps=2,
                                        apgd_steps=2, square_queries=5, eot=2)),
)

PRESETS = {"digits": DIGITS, "cifar10": CIFAR10, "cifar10-cpu": CIFAR10_CPU, "cifar10-jpeg-cpu": CIFAR10_JPEG_CPU, "cifar10-ncsnv2": CIFAR10_NCSNV2,
           "tiny": TINY}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}") from None
