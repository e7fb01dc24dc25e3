"""pursamere: PurSAMERE adversarial purification — score models, ERE, the purifier, attacks, evaluation."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pursamere")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from .method.ere import NoiseBank, ere
from .method.purify import InvalidInputError, PurifyConfig, Purifier
from .method.scores import GaussianMixture, PiecewiseAffinePotential, Score, sigma_ladder

__all__ = ["NoiseBank", "ere", "Purifier", "PurifyConfig", "InvalidInputError", "Score",
           "GaussianMixture", "PiecewiseAffinePotential", "sigma_ladder", "__version__"]
