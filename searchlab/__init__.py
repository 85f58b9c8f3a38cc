"""searchlab: Bayesian search for post-training recipes that sees through a misleading proxy.

Importing the package is cheap: torch, BoTorch and Optuna load lazily where they are used.
"""

from __future__ import annotations

__version__ = "0.1.0"
