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

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Property:
    name: str
    needs: tuple[str, ...]
    check: Callable[[object], None]
    doc: str = ""

    def applies_to(self, impl) -> bool:
        """True when ``impl`` defines every contract function this property calls."""
        return all(callable(getattr(impl, fn, None)) for fn in self.needs)


def registrar(properties: list[Property]):
    """``prop(*needs)``: a decorator that appends the decorated check to ``properties``."""

    def prop(*needs: str, name: str | None = None):
        def register(check: Callable[[object], None]):
            properties.append(
                Property(name or check.__name__, tuple(needs), check, (check.__doc__ or "").strip())
            )
            return check

        return register

    return prop
