"""The one shape of a property in every suite: a name, the contract functions it calls, a check.

A suite module (``reference/testing/suites/<algorithm>.py``) builds ``PROPERTIES`` with ``prop``::

    PROPERTIES: list[Property] = []
    prop = registrar(PROPERTIES)

    @prop("chunked", "recurrent")            # the contract functions this property calls
    def chunked_equals_recurrent(impl):      # impl: any object with those functions as attributes
        @given(...)                          # Hypothesis drives the examples; settings come
        def run(...):                        # from the loaded profile (or the grader's options)
            ...
            assert_close(..., what="chunked vs recurrent")
        run()

``check(impl)`` raises ``AssertionError`` (readable: shapes, which form disagreed with which, by
how much) when the property fails. The same ``Property`` objects serve three callers: the
project's own tests (against ``reference``, the kernels and simdist), the grader's command line
and its pytest plugin (against a student's module).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Callable

BACKENDS = ("numpy", "torch")


@dataclass(frozen=True)
class Property:
    """One property: its ``name``, the contract functions it ``needs``, and ``check(impl)``.

    ``backends`` are the array libraries the property can feed (``("torch",)`` for properties that
    differentiate with autograd); ``impl.BACKEND`` (``"numpy"`` when absent) must be one of them.
    """

    name: str
    needs: tuple[str, ...]
    check: Callable[[object], None]
    doc: str = ""
    backends: tuple[str, ...] = BACKENDS

    def applies_to(self, impl) -> bool:
        """True when ``impl`` defines every contract function this property calls (in a backend it feeds)."""
        return all(callable(getattr(impl, fn, None)) for fn in self.needs) and backend_of(impl) in self.backends

    def missing(self, impl) -> tuple[str, ...]:
        """The contract functions this property needs that ``impl`` does not define."""
        return tuple(fn for fn in self.needs if not callable(getattr(impl, fn, None)))


def registrar(properties: list[Property]):
    """``prop(*needs)``: a decorator that appends the decorated check to ``properties``."""

    def prop(*needs: str, name: str | None = None, backends: tuple[str, ...] = BACKENDS):
        def register(check: Callable[[object], None]):
            properties.append(
                Property(name or check.__name__, tuple(needs), check, (check.__doc__ or "").strip(), tuple(backends))
            )
            return check

        return register

    return prop


def backend_of(impl) -> str:
    """The array library ``impl`` is fed: its ``BACKEND`` attribute, ``"numpy"`` by default."""
    return getattr(impl, "BACKEND", "numpy")


# The grader's Hypothesis settings, scoped to one ``with using(...)`` block (a context variable, so
# nothing global changes). Without it, a check's examples follow the loaded profile.
_SETTINGS: contextvars.ContextVar = contextvars.ContextVar("reference_testing_settings", default=None)


@contextlib.contextmanager
def using(settings):
    """Run the checks inside this block under ``settings`` (a ``hypothesis.settings`` object)."""
    token = _SETTINGS.set(settings)
    try:
        yield settings
    finally:
        _SETTINGS.reset(token)


def configured(test):
    """Decorate a check's Hypothesis test (above ``@given``): the settings of ``using``, if any.

    Otherwise the loaded profile's, with no deadline (torch's first calls are slow) and the
    too-slow health checks off: the property tests' oracles are loops.
    """
    from hypothesis import HealthCheck, settings

    chosen = _SETTINGS.get()
    if chosen is None:
        chosen = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    return chosen(test)
