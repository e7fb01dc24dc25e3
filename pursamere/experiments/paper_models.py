"""The paper's own models: the official NCSNv2 CIFAR-10 checkpoint and the user's classifier, at the paper's settings.

Nothing here trains. The score model is the released NCSNv2 (``ermongroup/ncsnv2``,
``configs/cifar10.yml``) that the user downloads; the classifier is the user's (a factory and
a weights file, :mod:`pursamere.experiments.user_models`). Values marked "paper" are the
paper's CIFAR-10 settings (``docs/method.md``); "ours" are the project's where the paper lost
its value.

Example:
    >>> p = CIFAR10_NCSNV2.with_paths(score_checkpoint="checkpoint_300000.pth")
    >>> round(p.purify_config(16 / 255).rho * 255, 6)  # ρ = ε_pur / 2
    8.0
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from ..method.ncsnv2 import NCSNV2_CONFIGS, load_ncsnv2
from ..method.purify import PurifyConfig
from .user_models import ClassifierSpec, load_classifier

__all__ = ["PaperModelsPreset", "CIFAR10_NCSNV2", "PAPER_MODEL_PRESETS", "MissingModelError"]


class MissingModelError(ValueError):
    """A preset needs a user-supplied file that was not given."""


@dataclass(frozen=True)
class PaperModelsPreset:
    """An experiment on user-supplied models: where they are, and the paper's purifier and attack settings."""

    name: str
    data: str  # data set the models were trained on
    ncsnv2_config: str  # key of NCSNV2_CONFIGS (the official config the checkpoint was trained with)
    purify: PurifyConfig  # Algorithm 1 at the middle radius; rows vary eps_pur (ρ follows as ε_pur/2)
    eps_pur: tuple  # purification radii of the table rows
    threats: dict  # norm → attack budget ε
    score_checkpoint: Optional[str] = None  # user-supplied: the official checkpoint file (never downloaded)
    ema: bool = True  # use the checkpoint's EMA weights, as the official sampler does
    classifier: Optional[ClassifierSpec] = None  # user-supplied: factory + weights + normalisation
    # attacks (paper): gPGD20 and BPDA20-det at ℓ∞ with step 2/255 on the whole test set;
    # BPDA200-det at ℓ∞/ℓ2/ℓ1 with step 2.5ε/200 (Madry's rule) and BPDA+EoT on 1,000 test images
    gpgd_steps: int = 20
    bpda_steps: int = 20
    step_size_20: float = 2 / 255  # ℓ∞ step of the 20-step attacks (paper's value lost; the usual choice)
    bpda_long_steps: int = 200
    long_step_factor: float = 2.5  # step = factor · ε / steps
    n_test_long: int = 1000  # fixed subset for BPDA200-det and BPDA+EoT (paper)
    eot: int = 8  # BPDA+EoT samples per step for the stochastic baselines (ours)
    batch_size: int = 64

    def with_paths(self, score_checkpoint=None, classifier: Optional[ClassifierSpec] = None) -> "PaperModelsPreset":
        """A copy with the user's files filled in (``None`` keeps the current value)."""
        return replace(self, score_checkpoint=str(score_checkpoint) if score_checkpoint is not None else self.score_checkpoint,
                       classifier=classifier if classifier is not None else self.classifier)

    def purify_config(self, eps_pur: Optional[float] = None) -> PurifyConfig:
        """Algorithm 1's settings at radius ``eps_pur`` (default: the preset's), with ρ = ε_pur/2 (paper)."""
        return self.purify if eps_pur is None else self.purify.replace(eps_pur=float(eps_pur), rho=float(eps_pur) / 2)

    def load_score(self, device="cpu"):
        """The official NCSNv2 from ``score_checkpoint``: ``(net, info)``; a clear error when no path is set."""
        if not self.score_checkpoint:
            raise MissingModelError(
                f"preset {self.name} needs the official NCSNv2 {self.ncsnv2_config} checkpoint: download it from the "
                f"NCSNv2 authors' release (checkpoint_300000.pth) and pass its path (pursamere never downloads)")
        net, info = load_ncsnv2(self.score_checkpoint, self.ncsnv2_config, ema=self.ema)
        return net.to(device), info

    def load_classifier(self, device="cpu"):
        """The user's classifier as a frozen :class:`~pursamere.method.adapter.ClassifierAdapter`; a clear error when none is set."""
        if self.classifier is None:
            raise MissingModelError(f"preset {self.name} needs your classifier: a factory ('file.py:function') and "
                                    f"usually a weights file, with its input normalisation")
        cfg = NCSNV2_CONFIGS[self.ncsnv2_config]
        return load_classifier(self.classifier, (cfg.channels, cfg.image_size, cfg.image_size), device=device)


# The paper's CIFAR-10 path: ε_pur ∈ {8, 12, 16}/255, ρ = ε_pur/2, M = 4, ℓ∞ 8/255, ℓ2 0.5, ℓ1 12 (paper).
# σ ladder of the score model: 50 → 0.01 over 232 levels (the checkpoint's own, checked on load).
# Purification schedule σ 0.25 → 0.01 over 10 levels × 3 steps, lr 0.01 → 0.001: ours (the paper lost them),
# the same as the CIFAR-10 preset of presets.py. Noise draws i.i.d., as the paper (antithetic pairs are ours).
CIFAR10_NCSNV2 = PaperModelsPreset(
    name="cifar10-ncsnv2", data="cifar10", ncsnv2_config="cifar10",
    purify=PurifyConfig(eps_pur=12 / 255, norm="inf", rho=6 / 255, m=4, antithetic=False, sigma_max=0.25, sigma_min=0.01,
                        n_levels=10, steps_per_level=3, lr_max=0.01, lr_min=0.001, seed=0),
    eps_pur=(8 / 255, 12 / 255, 16 / 255),
    threats={"inf": 8 / 255, 2: 0.5, 1: 12.0},
)

PAPER_MODEL_PRESETS = {CIFAR10_NCSNV2.name: CIFAR10_NCSNV2}
