"""Bad input to every reference form raises a clear error that names the argument.

Each case is (description, arguments, expected exception, words the message must contain).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import lightning, linear_attention, softmax_attention

rng = np.random.default_rng(0)
Q = rng.standard_normal((2, 3, 5, 4))
K = rng.standard_normal((2, 3, 5, 4))
V = rng.standard_normal((2, 3, 5, 6))
DECAY = np.array([0.5, 0.9, 1.0])

# Every form of every algorithm, called as f(q, k, v, **kw).
FORMS = {
    "softmax.naive": lambda q, k, v, **kw: softmax_attention.naive(q, k, v, **kw),
    "softmax.tiled": lambda q, k, v, **kw: softmax_attention.tiled(q, k, v, **kw),
    "linear.recurrent": lambda q, k, v, **kw: linear_attention.recurrent(q, k, v, **kw),
    "linear.parallel": lambda q, k, v, **kw: linear_attention.parallel(q, k, v, **kw),
    "linear.chunked": lambda q, k, v, **kw: linear_attention.chunked(q, k, v, **kw),
    "lightning.recurrent": lambda q, k, v, **kw: lightning.recurrent(q, k, v, DECAY, **kw),
    "lightning.parallel": lambda q, k, v, **kw: lightning.parallel(q, k, v, DECAY, **kw),
    "lightning.chunked": lambda q, k, v, **kw: lightning.chunked(q, k, v, DECAY, **kw),
}
SAME_LENGTH = [name for name in FORMS if not name.startswith("softmax")]
WITH_STATE = ["linear.recurrent", "linear.chunked", "lightning.recurrent", "lightning.chunked"]
WITH_CHUNKS = ["linear.chunked", "lightning.chunked"]

SHAPE_CASES = [
    ("batch mismatch", (Q, K[:1], V), ValueError, ["k", "batch"]),
    ("heads mismatch", (Q, K, V[:, :2]), ValueError, ["v", "heads"]),
    ("q/k width", (Q, K[..., :3], V), ValueError, ["key width"]),
    ("k/v length", (Q, K, V[:, :, :4]), ValueError, ["k and v", "length"]),
    ("rank 3", (Q[0], K, V), ValueError, ["q", "4 dimensions"]),
    ("integer dtype", (Q.astype(np.int64), K.astype(np.int64), V.astype(np.int64)), TypeError, ["q", "floating"]),
    ("mixed dtypes", (Q.astype(np.float32), K, V), TypeError, ["dtype"]),
    ("mixed libraries", (torch.from_numpy(Q), K, V), TypeError, ["one library"]),
    ("not an array", ([[1.0]], K, V), TypeError, ["NumPy array or a torch tensor"]),
    ("empty sequence", (Q[:, :, :0], K[:, :, :0], V[:, :, :0]), ValueError, ["at least 1"]),
]


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_bad_shapes_and_dtypes(form, case):
    _, args, exc, words = case
    with pytest.raises(exc) as info:
        FORMS[form](*args)
    for w in words:
        assert w in str(info.value), f"{form}: message {str(info.value)!r} lacks {w!r}"


@pytest.mark.parametrize("form", SAME_LENGTH)
def test_query_and_key_lengths_must_match(form):
    with pytest.raises(ValueError, match="sequence length T"):
        FORMS[form](Q[:, :, :4], K, V)


@pytest.mark.parametrize("form", WITH_STATE)
@pytest.mark.parametrize(
    "state, exc, words",
    [
        (np.zeros((2, 3, 4, 5)), ValueError, "initial_state must have shape"),
        (np.zeros((2, 3, 4)), ValueError, "initial_state must have 4 dimensions"),
        (np.zeros((2, 3, 4, 6), dtype=np.float32), TypeError, "initial_state must have the dtype"),
        (torch.zeros(2, 3, 4, 6, dtype=torch.float64), TypeError, "initial_state must come from the same library"),
    ],
)
def test_bad_initial_state(form, state, exc, words):
    with pytest.raises(exc, match=words):
        FORMS[form](Q, K, V, initial_state=state)


@pytest.mark.parametrize("form", WITH_CHUNKS)
@pytest.mark.parametrize("chunk, exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_chunk_size(form, chunk, exc):
    with pytest.raises(exc, match="chunk_size must be a positive integer"):
        FORMS[form](Q, K, V, chunk_size=chunk)


@pytest.mark.parametrize("form", ["softmax.tiled"])
@pytest.mark.parametrize("arg", ["block_q", "block_k"])
def test_bad_block_sizes(form, arg):
    with pytest.raises(ValueError, match=f"{arg} must be a positive integer"):
        FORMS[form](Q, K, V, **{arg: 0})


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("scale, exc", [(float("nan"), ValueError), ("1", TypeError), (float("inf"), ValueError)])
def test_bad_scale(form, scale, exc):
    with pytest.raises(exc, match="scale must be"):
        FORMS[form](Q, K, V, scale=scale)


@pytest.mark.parametrize("form", ["lightning.recurrent", "lightning.parallel", "lightning.chunked"])
@pytest.mark.parametrize(
    "decay, exc, words",
    [
        (np.array([0.5, 0.9]), ValueError, "decay must have shape"),
        (np.array([0.5, 0.0, 1.0]), ValueError, r"decay must lie in \(0, 1\]"),
        (np.array([0.5, 1.5, 1.0]), ValueError, r"decay must lie in \(0, 1\]"),
        (np.array([1, 1, 1]), TypeError, "decay must have a real floating dtype"),
        (0.5, TypeError, "decay must be an array"),
    ],
)
def test_bad_decay(form, decay, exc, words):
    fn = getattr(lightning, form.split(".")[1])
    with pytest.raises(exc, match=words):
        fn(Q, K, V, decay)


@pytest.mark.parametrize(
    "do, exc, words",
    [
        (V[:, :, :4], ValueError, "do must have shape"),
        (None, TypeError, "do must be an array of the same library"),
        (V.tolist(), TypeError, "do must be an array of the same library"),
        (torch.from_numpy(V), TypeError, "do must be an array of the same library"),
    ],
)
def test_lightning_backward_checks_do(do, exc, words):
    with pytest.raises(exc, match=words):
        lightning.chunked_backward(Q, K, V, DECAY, do)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(num_heads=0), ValueError, "num_heads must be a positive integer"),
        (dict(num_heads=4, layer_idx=4, num_layers=4), ValueError, "layer_idx must lie"),
        (dict(num_heads=4, rule="alibi"), ValueError, "rule must be"),
    ],
)
def test_bad_tnl_decay_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        lightning.tnl_decay(**kwargs)


@pytest.mark.parametrize("form", ["softmax.naive", "linear.parallel"])
def test_causal_must_be_a_bool(form):
    with pytest.raises(TypeError, match="causal must be True or False"):
        FORMS[form](Q, K, V, causal="yes")


# --------------------------------------------------------------------------------------------
# Gated Linear Attention (reference.gla)
# --------------------------------------------------------------------------------------------

from reference import gla  # noqa: E402

LOG_ALPHA = np.log(rng.uniform(0.1, 1.0, (2, 3, 5, 4)))

GLA_FORMS = {
    "gla.recurrent": lambda q, k, v, la=LOG_ALPHA, **kw: gla.recurrent(q, k, v, la, **kw),
    "gla.parallel": lambda q, k, v, la=LOG_ALPHA, **kw: gla.parallel(q, k, v, la, **kw),
    "gla.chunked": lambda q, k, v, la=LOG_ALPHA, **kw: gla.chunked(q, k, v, la, **kw),
    "gla.chunked(materialize)": lambda q, k, v, la=LOG_ALPHA, **kw: gla.chunked(q, k, v, la, materialize=True, **kw),
    # do = v: a gradient of the right shape and dtype whenever v itself is valid
    "gla.chunked_backward": lambda q, k, v, la=LOG_ALPHA, **kw: gla.chunked_backward(q, k, v, la, v, **kw),
}


@pytest.mark.parametrize("form", list(GLA_FORMS))
@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_gla_bad_shapes_and_dtypes(form, case):
    _, args, exc, words = case
    with pytest.raises(exc) as info:
        GLA_FORMS[form](*args)
    for w in words:
        assert w in str(info.value), f"{form}: message {str(info.value)!r} lacks {w!r}"


@pytest.mark.parametrize("form", list(GLA_FORMS))
@pytest.mark.parametrize(
    "log_alpha, exc, words",
    [
        (LOG_ALPHA[:, :2], ValueError, r"log_alpha must have shape \[B, H, T, K\]"),
        (LOG_ALPHA[0], ValueError, "log_alpha must have 4 dimensions"),
        (-LOG_ALPHA, ValueError, "log_alpha must be ≤ 0"),
        # -inf is a full reset and allowed (tests/test_reliability.py); NaN is not a gate
        (np.where(LOG_ALPHA < -1, np.nan, LOG_ALPHA), ValueError, "log_alpha must be ≤ 0 and not NaN"),
        (LOG_ALPHA.astype(np.float32), TypeError, "log_alpha must have the dtype of q"),
        (np.zeros((2, 3, 5, 4), dtype=np.int64), TypeError, "log_alpha must have a real floating dtype"),
        (torch.from_numpy(LOG_ALPHA), TypeError, "log_alpha must be an array of the same library"),
        ([[0.0]], TypeError, "log_alpha must be an array of the same library"),
    ],
)
def test_gla_bad_log_alpha(form, log_alpha, exc, words):
    with pytest.raises(exc, match=words):
        GLA_FORMS[form](Q, K, V, log_alpha)


@pytest.mark.parametrize("form", ["gla.recurrent", "gla.chunked", "gla.chunked(materialize)"])
@pytest.mark.parametrize(
    "state, exc, words",
    [
        (np.zeros((2, 3, 4, 5)), ValueError, "initial_state must have shape"),
        (np.zeros((2, 3, 4, 6), dtype=np.float32), TypeError, "initial_state must have the dtype"),
        (torch.zeros(2, 3, 4, 6, dtype=torch.float64), TypeError, "initial_state must come from the same library"),
    ],
)
def test_gla_bad_initial_state(form, state, exc, words):
    with pytest.raises(exc, match=words):
        GLA_FORMS[form](Q, K, V, initial_state=state)


@pytest.mark.parametrize("form", list(GLA_FORMS))
@pytest.mark.parametrize("scale, exc", [(float("nan"), ValueError), ("1", TypeError)])
def test_gla_bad_scale(form, scale, exc):
    with pytest.raises(exc, match="scale must be"):
        GLA_FORMS[form](Q, K, V, scale=scale)


@pytest.mark.parametrize("form", ["gla.chunked", "gla.chunked(materialize)", "gla.chunked_backward"])
@pytest.mark.parametrize("arg", ["chunk_size", "sub_chunk"])
@pytest.mark.parametrize("value, exc", [(0, ValueError), (-2, ValueError), (2.5, TypeError), (True, TypeError)])
def test_gla_bad_chunk_and_sub_chunk(form, arg, value, exc):
    with pytest.raises(exc, match=f"{arg} must be a positive integer"):
        GLA_FORMS[form](Q, K, V, **{arg: value})


def test_gla_materialize_must_be_a_bool():
    with pytest.raises(TypeError, match="materialize must be True or False"):
        gla.chunked(Q, K, V, LOG_ALPHA, materialize="yes")


def test_gla_backward_checks_do():
    with pytest.raises(ValueError, match="do must be"):
        gla.chunked_backward(Q, K, V, LOG_ALPHA, V[:, :, :4])
    with pytest.raises(TypeError, match="do must have the dtype"):
        gla.chunked_backward(Q, K, V, LOG_ALPHA, V.astype(np.float32))


X = rng.standard_normal((2, 5, 12))
W1, W2, GB = rng.standard_normal((12, 16)), rng.standard_normal((16, 3, 4)), rng.standard_normal((3, 4))


@pytest.mark.parametrize(
    "args, kwargs, exc, words",
    [
        ((X[0], W1, W2, GB), {}, ValueError, r"x must have 3 dimensions \[B, T, d\]"),
        ((X, W1[:10], W2, GB), {}, ValueError, r"w1 must have shape \[d, r\] with d = 12"),
        ((X, W1, W2[:8], GB), {}, ValueError, r"w2 must have shape \[r, H, K\]"),
        ((X, W1, W2, GB[:2]), {}, ValueError, r"b must have shape \[H, K\]"),
        ((X, W1, W2[:, 0], GB), {}, ValueError, r"b must have shape \[K\] when w2 is \[r, K\]"),
        ((X, W1.astype(np.float32), W2, GB), {}, TypeError, "must share one dtype"),
        ((X.astype(np.int64), W1, W2, GB), {}, TypeError, "x must have a real floating dtype"),
        ((torch.from_numpy(X), W1, W2, GB), {}, TypeError, "one library"),
        ((X, W1, W2, GB), dict(tau=0), ValueError, "tau must be a finite positive number"),
        ((X, W1, W2, GB), dict(tau=float("inf")), ValueError, "tau must be a finite positive number"),
    ],
)
def test_gla_bad_gate_arguments(args, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        gla.gate(*args, **kwargs)


def test_gla_layer_checks_its_sizes():
    with pytest.raises(ValueError, match="d_model must be a multiple of 2 · num_heads"):
        gla.GLALayer(30, 4)
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        gla.GLALayer(32, 0)
