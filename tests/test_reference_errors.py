"""One mistake, one exception: ``reference.lightning`` and ``reference.gla`` (and the forms they share
with ``reference.linear_attention``) raise the same type for the same mistake — ``TypeError`` for a
wrong type, dtype or library, ``ValueError`` for a wrong shape or value — naming the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import gla, lightning

q = np.zeros((1, 2, 5, 3))
v = np.zeros((1, 2, 5, 4))
#: The extra argument of each algorithm: Lightning's decay [H], GLA's log-gates [B, H, T, K].
EXTRA = {"lightning": (lightning, "decay", np.array([0.5, 0.9])), "gla": (gla, "log_alpha", np.zeros((1, 2, 5, 3)))}

MISTAKES = [
    # (what, how to make it from the good extra argument / keyword options, exception)
    ("extra is None", lambda x: (None, {}), TypeError),
    ("extra is a string", lambda x: ("ab", {}), TypeError),
    ("extra from another library", lambda x: (torch.as_tensor(x), {}), TypeError),
    ("extra of integers", lambda x: (x.astype(np.int64), {}), TypeError),
    ("extra of the wrong shape", lambda x: (x[..., :1], {}), ValueError),
    ("extra not finite", lambda x: (x * np.nan, {}), ValueError),
    ("extra out of range", lambda x: (x + 2.0, {}), ValueError),
    ("chunk_size 0", lambda x: (x, {"chunk_size": 0}), ValueError),
    ("chunk_size 2.0", lambda x: (x, {"chunk_size": 2.0}), TypeError),
    ("scale a string", lambda x: (x, {"scale": "a"}), TypeError),
    ("scale nan", lambda x: (x, {"scale": float("nan")}), ValueError),
    ("initial_state a list", lambda x: (x, {"initial_state": [[0.0]]}), TypeError),
    ("initial_state of the wrong shape", lambda x: (x, {"initial_state": np.zeros((1, 2, 4, 3))}), ValueError),
    ("initial_state of another dtype", lambda x: (x, {"initial_state": np.zeros((1, 2, 3, 4), np.float32)}), TypeError),
]


@pytest.mark.parametrize("what, make, exc", MISTAKES, ids=[m[0] for m in MISTAKES])
@pytest.mark.parametrize("algorithm", EXTRA)
def test_the_same_mistake_raises_the_same_exception(algorithm, what, make, exc):
    module, name, good = EXTRA[algorithm]
    extra, options = make(good)
    with pytest.raises(exc) as raised:
        module.chunked(q, q, v, extra, **options)
    named = name if what.startswith("extra") else what.split()[0]
    assert named in str(raised.value), f"{algorithm}: the message does not name {named}: {raised.value}"


def test_chunk_states_checks_keys_and_values_as_such():
    """``reference.gla.chunk_states`` takes no queries: its errors speak of k and v."""
    with pytest.raises(ValueError, match="v must have batch, heads and length"):
        gla.chunk_states(q, np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 5, 3)))
    with pytest.raises(TypeError, match="k and v must share one dtype"):
        gla.chunk_states(q, v.astype(np.float32), np.zeros((1, 2, 5, 3)))
