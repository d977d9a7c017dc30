"""What the property suites assert with, and the handle they call an implementation through.

``assert_close`` compares a result with what it should be and, when they differ, says which form
disagreed with which, how much (relative error against the tolerance), where the largest gap is and
what the values there are. ``assert_rejects`` checks that a bad input raises ``ValueError`` or
``TypeError`` naming the argument. ``Target`` wraps a module (or a few functions) with the array
library its inputs come in and, for implementations that compute in lower precision, a tolerance.
"""

from __future__ import annotations

import re
import types

import numpy as np

from reference.testing.strategies import to_backend, to_numpy
from reference.testing.suites._base import backend_of

__all__ = ["Target", "assert_close", "assert_rejects", "tolerance", "inputs", "backend_of"]


class Target:
    """An implementation handle: contract functions as attributes, plus how to feed them.

    Args:
        module: a module (or any object) whose attributes are contract functions; may be ``None``.
        backend: ``"numpy"`` (float64 arrays in) or ``"torch"`` (float64 tensors in; properties that
            differentiate with autograd need it).
        tolerance: the largest relative error accepted against the float64 oracles (``None``: the
            property's own, 1e-9 or so; an implementation in float32 needs about 1e-5).
        name: how reports name it.
        **functions: contract functions given directly; they take precedence over ``module``'s.
    """

    def __init__(self, module=None, *, backend: str | None = None, tolerance: float | None = None, name=None, **functions):
        if backend is None:
            backend = getattr(module, "BACKEND", "numpy")
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        self._module = module
        self._functions = functions
        self.BACKEND = backend
        self.TOLERANCE = tolerance if tolerance is not None else getattr(module, "TOLERANCE", None)
        self.name = name or getattr(module, "__name__", None) or "implementation"

    def __getattr__(self, attr):
        functions = self.__dict__.get("_functions", {})
        if attr in functions:
            return functions[attr]
        module = self.__dict__.get("_module")
        if module is not None and not attr.startswith("__"):
            return getattr(module, attr)
        raise AttributeError(attr)

    def __repr__(self) -> str:
        return f"Target({self.name}, backend={self.BACKEND!r})"


def tolerance(impl, default: float) -> float:
    """``impl.TOLERANCE`` when it sets one, else the property's ``default``."""
    tol = getattr(impl, "TOLERANCE", None)
    return default if tol is None else float(tol)


def inputs(impl, *arrays, requires_grad: bool = False):
    """The float64 NumPy ``arrays`` in ``impl``'s library (``None`` stays ``None``)."""
    if backend_of(impl) == "numpy":
        return arrays
    arrays = tuple(None if a is None else np.asarray(a, dtype=np.float64) for a in arrays)
    return to_backend("torch", *arrays, requires_grad=requires_grad)


def _as_array(x, what: str, name: str, shape) -> np.ndarray:
    if isinstance(x, (tuple, list)) or not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise AssertionError(f"{what}: {name} should be one array of shape {tuple(shape)}, got a {type(x).__name__}")
    return np.asarray(to_numpy(x), dtype=np.float64)


def assert_close(got, want, *, tol: float, what: str, name: str = "o", case=None) -> None:
    """``‖got − want‖ / ‖want‖ ≤ tol`` (absolute when ``want`` is all zeros), or a readable AssertionError.

    Args:
        got: the implementation's result (NumPy or torch).
        want: the expected float64 result.
        tol: relative tolerance.
        what: which form is compared with which (``"chunked vs the float64 oracle"``).
        name: the quantity (``"o"``, ``"final state"``, ``"dq"``).
        case: the drawn ``Case`` (printed with the message).
    """
    want = np.asarray(to_numpy(want), dtype=np.float64)
    got = _as_array(got, what, name, want.shape)
    where = f"\n  case: {case!r}" if case is not None else ""
    if got.shape != want.shape:
        raise AssertionError(f"{what}: {name} has shape {got.shape}, expected {want.shape}{where}")
    if not np.all(np.isfinite(got)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(got))[0])
        raise AssertionError(
            f"{what}: {name} has non-finite values (first at index {list(bad)}: {got[bad]}; "
            f"expected {want[bad]:.6g}){where}"
        )
    denom = float(np.linalg.norm(want))
    diff = float(np.linalg.norm(got - want))
    err = diff / denom if denom > 0 else diff
    if not err <= tol:
        idx = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(got - want)), got.shape))
        kind = "relative error" if denom > 0 else "absolute error, as the expected values are all 0"
        raise AssertionError(
            f"{what}: {name} differs by {err:.3g} ({kind}; tolerance {tol:.0e}); "
            f"largest gap at index {list(idx)}: got {got[idx]:.6g}, expected {want[idx]:.6g}{where}"
        )


def assert_rejects(call, *, argument: str, what: str) -> None:
    """``call()`` must raise ``ValueError`` or ``TypeError`` whose message names ``argument``."""
    try:
        call()
    except NotImplementedError:
        raise
    except (ValueError, TypeError) as err:
        if not re.search(rf"(?<![A-Za-z0-9_]){re.escape(argument)}(?![A-Za-z0-9_])", str(err)):
            raise AssertionError(
                f"{what}: raised {type(err).__name__}, but its message does not name the argument "
                f"{argument!r}: {err}"
            ) from None
        return
    except Exception as err:  # noqa: BLE001  (any other exception is the finding)
        raise AssertionError(
            f"{what}: raised {type(err).__name__} ({err}); expected a ValueError or TypeError naming {argument!r}"
        ) from None
    raise AssertionError(f"{what}: returned normally; expected a ValueError or TypeError naming {argument!r}")


def module_of(**functions) -> types.SimpleNamespace:
    """A namespace holding ``functions`` (handy for pointing a suite at a few loose functions)."""
    return types.SimpleNamespace(**functions)
