"""pursamere: PurSAMERE adversarial purification — score models, ERE, the purifier, attacks, evaluation.

The package has four layers (imports point down): :mod:`pursamere.method` (score models, the ERE,
geometry, the purifier, baselines, training), :mod:`pursamere.evaluation` (threats, attacks, the
suite, results, ``evaluate_purifier``), :mod:`pursamere.experiments` (presets, data, trained
models, protocols and the one engine) and the faces (:mod:`pursamere.cli`, :mod:`pursamere.book`).
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pursamere")
except PackageNotFoundError:  # a source tree without installation (e.g. a copied checkout): its pyproject.toml
    def _source_version() -> str:
        import tomllib
        from pathlib import Path

        try:
            with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
                return tomllib.load(f)["project"]["version"] + "+source"
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0.0.0+unknown"

    __version__ = _source_version()

from .evaluation.attacks import Threat, pgd
from .evaluation.defended import Defended
from .evaluation.report import Report, evaluate_purifier
from .method.ere import NoiseBank, ere
from .method.purify import InvalidInputError, PurifyConfig, Purifier
from .method.scores import GaussianMixture, PiecewiseAffinePotential, Score, sigma_ladder

__all__ = ["NoiseBank", "ere", "Purifier", "PurifyConfig", "InvalidInputError", "Score", "GaussianMixture",
           "PiecewiseAffinePotential", "sigma_ladder", "Threat", "pgd", "Defended", "evaluate_purifier", "Report",
           "__version__"]
