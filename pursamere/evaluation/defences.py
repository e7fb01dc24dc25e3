"""Defences with a structured identity: what purifies, with which settings, in front of which classifier.

A :class:`Defence` is a classifier with an optional purifier in front. Besides its display name
(for people, never parsed) it knows its :class:`Family`, the classifier it wraps, its purifier's
settings and whether it is deterministic. Results rows store these fields, and every decision of
the package (which attacks apply, which rows a table shows, which runs a comparison pairs) is
taken on them.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional

import torch.nn as nn

from ..io import config_hash, fingerprint
from .defended import Defended

__all__ = ["Family", "Defence", "Identity", "purifier_family", "config_family"]


class Family(str, Enum):
    """What kind of defence a row measures."""

    UNDEFENDED = "undefended"
    ADVERSARIAL_TRAINING = "adversarial training"  # PGD-AT (Madry et al. 2018)
    TRADES = "TRADES"  # Zhang et al. 2019
    PURSAMERE = "PurSAMERE"  # Algorithm 1 with SAM on (ρ > 0 or ρ tied to σ)
    ERE_DESCENT = "ERE descent"  # Algorithm 1 with SAM off
    ADP = "ADP"  # Yoon et al. 2021
    DIFFPURE = "DiffPure-style"  # after Nie et al. 2022
    CUSTOM = "custom"  # any other purifier x -> x (evaluate_purifier)

    @property
    def purifies(self) -> bool:
        """A purifier sits in front of the classifier."""
        return self not in (Family.UNDEFENDED, Family.ADVERSARIAL_TRAINING, Family.TRADES)


class Identity:
    """The no-op purifier (an undefended classifier), differentiable for every gradient mode."""

    def __call__(self, x):
        return x

    def unrolled(self, x, checkpoint: bool = True):
        return x


def config_family(config) -> Family:
    """The family a purifier config builds: Algorithm 1 with SAM on or off, ADP, DiffPure-style (``None``: no purifier)."""
    from ..method.baselines import ADPConfig, DiffPureConfig
    from ..method.purify import PurifyConfig

    if config is None:
        return Family.UNDEFENDED
    if isinstance(config, PurifyConfig):
        return Family.PURSAMERE if config.sam else Family.ERE_DESCENT
    if isinstance(config, ADPConfig):
        return Family.ADP
    if isinstance(config, DiffPureConfig):
        return Family.DIFFPURE
    return Family.CUSTOM


def purifier_family(purifier) -> Family:
    """The family of a purifier object: Algorithm 1 (SAM on or off), a baseline, none, or custom."""
    from ..method.baselines import ADP, DiffPure
    from ..method.purify import Purifier

    if purifier is None or isinstance(purifier, Identity):
        return Family.UNDEFENDED
    if isinstance(purifier, (Purifier, ADP, DiffPure)):
        return config_family(purifier.config)
    return Family.CUSTOM


@dataclass
class Defence:
    """A classifier with an optional purifier in front, and who it is.

    Args:
        name: label in tables (for people; nothing decides on it).
        classifier: ``nn.Module`` ``x -> logits`` (eval mode).
        purifier: ``x -> x`` (``None`` = no purifier).
        family: the kind of defence; ``None`` → read from the purifier (:func:`purifier_family`).
            Classifiers without a purifier must say whether they are adversarially trained.
        classifier_id: which classifier it wraps (``"plain"``, ``"eq17"``, ``"pgd-at"``,
            ``"trades"``, or a user's label).
        stochastic: the purifier draws fresh noise per call (attack with EoT; predictions
            average ``n_runs`` runs). Read from ``purifier.config.fixed_noise`` when omitted.
        n_runs: runs averaged per prediction (ADP's protocol). Read from the config.
    """

    name: str
    classifier: nn.Module
    purifier: Optional[Callable] = None
    family: Optional[Family] = None
    classifier_id: str = "plain"
    stochastic: Optional[bool] = None
    n_runs: Optional[int] = None
    tag: str = ""  # extra identity for the fingerprint (e.g. a hash of a user purifier's outputs)

    def __post_init__(self):
        if self.purifier is None:
            self.purifier = Identity()
        if self.family is None:
            self.family = purifier_family(self.purifier)
        self.family = Family(self.family)
        if self.family.purifies == isinstance(self.purifier, Identity):
            raise ValueError(f"defence {self.name!r}: family {self.family.value!r} "
                             f"{'needs a purifier' if self.family.purifies else 'has no purifier'}")
        cfg = getattr(self.purifier, "config", None)
        if self.stochastic is None:
            self.stochastic = cfg is not None and hasattr(cfg, "fixed_noise") and not cfg.fixed_noise
        if self.n_runs is None:
            self.n_runs = int(getattr(cfg, "n_runs", 1)) if self.stochastic else 1

    # ------------------------------------------------------------------ identity
    @property
    def deterministic(self) -> bool:
        """Same input → same output (fixed noise, or no noise at all)."""
        return not self.stochastic

    @property
    def has_purifier(self) -> bool:
        return not isinstance(self.purifier, Identity)

    def settings(self) -> dict:
        """The purifier's settings (its config dataclass as JSON-able values; ``{}`` without one)."""
        cfg = getattr(self.purifier, "config", None)
        if cfg is None or not dataclasses.is_dataclass(cfg):
            return {}
        return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))

    @property
    def eps_pur(self) -> Optional[float]:
        """ε_pur of an Algorithm-1 purifier (``None`` for other defences)."""
        return self.settings().get("eps_pur") if self.family in (Family.PURSAMERE, Family.ERE_DESCENT) else None

    def identity(self) -> dict:
        """The fields a results row records about the defence."""
        return {"family": self.family.value, "classifier": self.classifier_id, "purifier": self.settings(),
                "deterministic": self.deterministic}

    def model_fingerprints(self) -> dict:
        """Fingerprints of the weights behind the row: the classifier and the purifier's score network."""
        out = {"classifier": fingerprint(*self.classifier.state_dict().values())}
        score = getattr(self.purifier, "score", None)
        if isinstance(score, nn.Module):
            out["score"] = fingerprint(*score.state_dict().values())
        return out

    def fingerprint(self) -> str:
        """A hash of the classifier's and the purifier's weights and settings: rows made by another
        defence under the same name are never reused on resume."""
        tensors = list(self.classifier.state_dict().values())
        for part in (getattr(self.purifier, "score", None), self.purifier):
            if isinstance(part, nn.Module):
                tensors += list(part.state_dict().values())
        return f"{fingerprint(*tensors)}-{config_hash(self.settings())}" + (f"-{self.tag}" if self.tag else "")

    # ------------------------------------------------------------------ attack surface
    def model(self, gradient: str, unroll_last: Optional[int] = None) -> Defended:
        """The defence as an attackable module with the given gradient rule (``unroll_last``:
        partial unrolling, see :class:`pursamere.evaluation.defended.Defended`)."""
        if unroll_last is not None and not self.has_purifier:
            unroll_last = None  # nothing to unroll: the exact gradient of the identity
        return Defended(self.classifier, self.purifier, gradient=gradient, unroll_last=unroll_last)
