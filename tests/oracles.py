"""Moved to ``reference.testing.oracles`` (installed with the package); kept so old imports work."""

from reference.testing.oracles import *  # noqa: F401,F403
