"""pursamere: PurSAMERE adversarial purification — score models, ERE, the purifier, attacks, evaluation.

The package has four layers (imports point down): :mod:`pursamere.method` (score models, the ERE,
geometry, the purifier, baselines, training), :mod:`pursamere.evaluation` (threats, attacks, the
suite, results, ``evaluate_purifier``), :mod:`pursamere.experiments` (presets, data, trained
models, protocols and the one engine) and the faces (:mod:`pursamere.cli`, :mod:`pursamere.book`).
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pursamere")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from .evaluation.attacks import Threat, pgd
from .evaluation.defended import Defended
from .evaluation.report import Report, evaluate_purifier
from .method.ere import NoiseBank, ere
from .method.purify import InvalidInputError, PurifyConfig, Purifier
from .method.scores import GaussianMixture, PiecewiseAffinePotential, Score, sigma_ladder

__all__ = ["NoiseBank", "ere", "Purifier", "PurifyConfig", "InvalidInputError", "Score", "GaussianMixture",
           "PiecewiseAffinePotential", "sigma_ladder", "Threat", "pgd", "Defended", "evaluate_purifier", "Report",
           "__version__"]
