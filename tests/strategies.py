"""Moved to ``reference.testing.strategies`` (installed with the package); kept so old imports work."""

from reference.testing.strategies import *  # noqa: F401,F403
from reference.testing.strategies import Dims  # noqa: F401  (named explicitly for readers)
