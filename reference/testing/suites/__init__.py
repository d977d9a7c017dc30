"""The property suites, one module per algorithm, each exposing ``PROPERTIES`` (see ``_base``).

``SUITES`` maps the grader's algorithm names to modules; ``load(name)`` imports one. A suite whose
module is not in this installation yet (the sparse half lands later) raises ``SuiteUnavailable``.
"""

from __future__ import annotations

import importlib

SUITES = {
    "softmax": "reference.testing.suites.softmax",
    "linear": "reference.testing.suites.linear",
    "lightning": "reference.testing.suites.lightning",
    "gla": "reference.testing.suites.gla",
    "lasp": "reference.testing.suites.lasp",
    "seer": "reference.testing.suites.seer",
    "double_sparsity": "reference.testing.suites.double_sparsity",
    "rope": "reference.testing.suites.rope",
}


class SuiteUnavailable(LookupError):
    """The algorithm is known but its suite is not available in this installation."""


def load(name: str):
    """The suite module for algorithm ``name`` (``softmax``, ``linear``, ``lightning``, ``gla``, ...)."""
    if name not in SUITES:
        raise ValueError(f"algorithm must be one of {', '.join(SUITES)}, got {name!r}")
    try:
        return importlib.import_module(SUITES[name])
    except ModuleNotFoundError as err:
        if err.name != SUITES[name]:
            raise
        raise SuiteUnavailable(f"the {name} suite is not available yet ({SUITES[name]} is not installed)") from None


def contract(suite) -> tuple[str, ...]:
    """The contract functions of a suite: its ``CONTRACT``, else every function its properties need."""
    declared = getattr(suite, "CONTRACT", None)
    if declared:
        return tuple(declared)
    seen: dict[str, None] = {}
    for p in suite.PROPERTIES:
        seen.update(dict.fromkeys(p.needs))
    return tuple(seen)
