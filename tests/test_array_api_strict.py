"""The reference keeps its array-API promise: every form runs on ``array_api_strict`` arrays.

``array-api-strict`` is the standard's own strict implementation: it refuses whatever is NumPy-only
(``x[None]`` without an ellipsis, implicit dtype promotion, mixed devices, ...). Each reference form is
run on strict arrays and on NumPy arrays of the same float64 values; the results must be strict
arrays again and equal NumPy's to rounding. The other tests cover NumPy and torch; this one pins that
nothing outside the standard crept in.
"""

from __future__ import annotations

import numpy as np
import pytest

xp = pytest.importorskip("array_api_strict")

from reference import gla, lightning, linear_attention, softmax_attention  # noqa: E402

B, H, T, K, V = 1, 2, 11, 3, 4  # T = 11: no multiple of the chunk sizes below


def _inputs():
    rng = np.random.default_rng(0)
    return dict(
        q=rng.standard_normal((B, H, T, K)),
        k=rng.standard_normal((B, H, T, K)),
        v=rng.standard_normal((B, H, T, V)),
        do=rng.standard_normal((B, H, T, V)),
        log_alpha=-rng.uniform(0.0, 1.5, (B, H, T, K)),
        state=rng.standard_normal((B, H, K, V)),
        decay=np.array([0.5, 0.9]),
        x=rng.standard_normal((B, T, 8)),
        w1=rng.standard_normal((8, 16)),
        w2=rng.standard_normal((16, K)),
        b=rng.standard_normal((K,)),
    )


#: Every public form of softmax, linear, Lightning and GLA, called with arrays from ``a``.
FORMS = {
    "softmax_attention.naive": lambda a: softmax_attention.naive(a["q"], a["k"], a["v"]),
    "softmax_attention.naive(causal=False)": lambda a: softmax_attention.naive(a["q"], a["k"], a["v"], causal=False),
    "softmax_attention.tiled": lambda a: softmax_attention.tiled(a["q"], a["k"], a["v"], block_q=4, block_k=4),
    "linear_attention.recurrent": lambda a: linear_attention.recurrent(a["q"], a["k"], a["v"], initial_state=a["state"]),
    "linear_attention.parallel": lambda a: linear_attention.parallel(a["q"], a["k"], a["v"]),
    "linear_attention.parallel(causal=False)": lambda a: linear_attention.parallel(a["q"], a["k"], a["v"], causal=False),
    "linear_attention.chunked": lambda a: linear_attention.chunked(a["q"], a["k"], a["v"], chunk_size=4,
                                                                   initial_state=a["state"]),
    "lightning.decay_mask": lambda a: lightning.decay_mask(a["decay"], T),
    "lightning.recurrent": lambda a: lightning.recurrent(a["q"], a["k"], a["v"], a["decay"], initial_state=a["state"]),
    "lightning.parallel": lambda a: lightning.parallel(a["q"], a["k"], a["v"], a["decay"], scale=0.5),
    "lightning.chunked": lambda a: lightning.chunked(a["q"], a["k"], a["v"], a["decay"], chunk_size=4,
                                                     initial_state=a["state"]),
    "lightning.chunked_backward": lambda a: lightning.chunked_backward(a["q"], a["k"], a["v"], a["decay"], a["do"],
                                                                       chunk_size=4),
    "gla.gate": lambda a: gla.gate(a["x"], a["w1"], a["w2"], a["b"]),
    "gla.recurrent": lambda a: gla.recurrent(a["q"], a["k"], a["v"], a["log_alpha"], initial_state=a["state"]),
    "gla.parallel": lambda a: gla.parallel(a["q"], a["k"], a["v"], a["log_alpha"]),
    "gla.parallel_factorised": lambda a: gla.parallel_factorised(a["q"], a["k"], a["v"], a["log_alpha"]),
    "gla.chunk_states": lambda a: gla.chunk_states(a["k"], a["v"], a["log_alpha"], chunk_size=4),
    "gla.chunked": lambda a: gla.chunked(a["q"], a["k"], a["v"], a["log_alpha"], chunk_size=8, sub_chunk=4,
                                         initial_state=a["state"]),
    "gla.chunked(materialize=True)": lambda a: gla.chunked(a["q"], a["k"], a["v"], a["log_alpha"], chunk_size=8,
                                                           sub_chunk=4, materialize=True),
    "gla.chunked_backward": lambda a: gla.chunked_backward(a["q"], a["k"], a["v"], a["log_alpha"], a["do"],
                                                           chunk_size=8, sub_chunk=4),
}  # fmt: skip


def _leaves(out):
    if isinstance(out, (tuple, list)):
        return [leaf for item in out for leaf in _leaves(item)]
    return [] if out is None else [out]


@pytest.mark.parametrize("form", FORMS)
def test_every_form_runs_on_array_api_strict_and_equals_numpy(form):
    inputs = _inputs()
    want = _leaves(FORMS[form](inputs))
    got = _leaves(FORMS[form]({name: xp.asarray(x) for name, x in inputs.items()}))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert type(g).__module__.startswith("array_api_strict"), f"{form} returned {type(g).__name__}"
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-12, atol=1e-12, err_msg=form)


def test_the_strict_namespace_refuses_what_numpy_allows():
    """The test above means something: the idiom reference.lightning once used fails on strict arrays."""
    x = xp.asarray(np.ones((2, 2)))
    with pytest.raises(IndexError):
        x[None]
    assert x[None, ...].shape == (1, 2, 2)
