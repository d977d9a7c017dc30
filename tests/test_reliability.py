"""Reliability of the forms and kernels under adversarial inputs (issue "Reliability").

* Poisoned tokens: a NaN or ±inf in token t's q or k leaves every output row before t bit for bit
  unchanged, in both kernels (interpreter; the same tests run on a GPU); a poisoned v leaves every
  row before t's chunk unchanged. (The reference forms are held to the same by the property suites,
  ``reference.testing.suites._adversarial``, which tests/test_{linear_attention,lightning,gla}.py run.)
* Reset gates: ``log α = -inf`` at random steps (and finite gates of -1e20) in the GLA kernel,
  forward and backward, against the float64 loop oracle.
* Decays and gates in at least float32: bf16 inputs with ``λ = 0.999`` over 300 tokens match float64
  to bf16's error in every Lightning form (``0.999`` is ``1.0`` in bf16: rounding the decay to the
  input dtype gives about 20 % error), and GLA's forms likewise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import gla as ref_gla
from reference import lightning as ref_lightning
from reference import softmax_attention as ref_softmax
from reference.testing import oracles
from reference.testing.suites._adversarial import check_poison, poison_limit, reset_gates
from tests.conftest import HAS_GPU
from tests.strategies import rel_err

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEVICE = "cuda" if HAS_GPU else "cpu"


def _arrays(B, H, T, K, V, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "q": rng.standard_normal((B, H, T, K)),
        "k": rng.standard_normal((B, H, T, K)),
        "v": rng.standard_normal((B, H, T, V)),
        "log_alpha": -rng.uniform(0.0, 1.0, (B, H, T, K)),
    }


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).to(DEVICE, torch.float32)


# --------------------------------------------------------------------------------------------
# Poisoned tokens in the kernels
# --------------------------------------------------------------------------------------------

triton = pytest.importorskip("triton", reason="Triton is installed on Linux only (pyproject.toml)")
from kernels import gla as k_gla  # noqa: E402  (after conftest has set TRITON_INTERPRET)
from kernels import lightning as k_lightning  # noqa: E402

CHUNK = 16
# (name, t, value): the last token, a token inside the second chunk, the first token of a chunk
POISONS = [("k", 39, float("nan")), ("q", 20, float("inf")), ("k", 21, float("-inf")), ("v", 37, float("nan")),
           ("v", 16, float("inf")), ("k", 16, float("nan"))]  # fmt: skip


def _lightning_run(segment_size):
    def run(a):
        q, k, v = (_t(a[n]) for n in "qkv")
        o = k_lightning.attention(q, k, v, [0.9, 0.5], scale=0.5, chunk_size=CHUNK, segment_size=segment_size)
        return o.cpu()

    return run


def _gla_run(a):
    q, k, v, g = (_t(a[n]) for n in ("q", "k", "v", "log_alpha"))
    return k_gla.attention(q, k, v, g, scale=0.5, config=k_gla.Config(chunk_size=CHUNK)).cpu()


@pytest.mark.parametrize("name, t, value", POISONS)
@pytest.mark.parametrize("segment_size", [None, 16])
def test_lightning_kernel_poison_stays_in_the_future(name, t, value, segment_size):
    limit = poison_limit(name, t, "chunked", CHUNK)
    check_poison(_lightning_run(segment_size), _arrays(1, 2, 40, 8, 8), name, t, value, limit,
                 f"kernels.lightning (chunk {CHUNK}, segment_size={segment_size})")  # fmt: skip


@pytest.mark.parametrize("name, t, value", POISONS)
def test_gla_kernel_poison_stays_in_the_future(name, t, value):
    limit = poison_limit(name, t, "chunked", CHUNK)
    check_poison(_gla_run, _arrays(1, 2, 40, 8, 8), name, t, value, limit, f"kernels.gla (chunk {CHUNK})")


# --------------------------------------------------------------------------------------------
# Reset gates in the GLA kernel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_gla_kernel_reset_gates_are_exact(seed):
    """-inf (resets) and -1e20 gates at random steps: outputs, final state and every gradient vs float64."""
    B, H, T, K, V = 1, 2, 40, 8, 8
    a = _arrays(B, H, T, K, V, seed)
    rng = np.random.default_rng(seed + 10)
    a["log_alpha"] = reset_gates(rng, (B, H, T, K))
    s0 = rng.standard_normal((B, H, K, V))
    do = rng.standard_normal((B, H, T, V))
    leaves = [_t(a[n]).requires_grad_() for n in ("q", "k", "v", "log_alpha")]
    o, s = k_gla.attention(*leaves, scale=0.5, initial_state=_t(s0), output_final_state=True,
                           config=k_gla.Config(chunk_size=CHUNK))  # fmt: skip
    want_o, want_s = oracles.gated_linear_attention(a["q"], a["k"], a["v"], a["log_alpha"], scale=0.5, initial_state=s0)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert rel_err(o, want_o) < 1e-5 and rel_err(s, want_s) < 1e-5
    # gradients without an initial state (the oracle's derivative has none)
    leaves = [x.detach().requires_grad_() for x in leaves]
    o = k_gla.attention(*leaves, scale=0.5, config=k_gla.Config(chunk_size=CHUNK))
    (o * _t(do)).sum().backward()
    want = oracles.gated_linear_attention_grads(a["q"], a["k"], a["v"], a["log_alpha"], do, scale=0.5)
    for name, leaf, w in zip(("dq", "dk", "dv", "dlog_alpha"), leaves, want):
        assert torch.isfinite(leaf.grad).all(), name
        assert rel_err(leaf.grad, w) < 1e-4, name


# --------------------------------------------------------------------------------------------
# Decays and gates keep their precision with 16-bit inputs
# --------------------------------------------------------------------------------------------


def _bf16(*arrays):
    return [torch.from_numpy(x).bfloat16() for x in arrays]


@pytest.mark.parametrize("form", ["recurrent", "parallel", "chunked"])
def test_lightning_bf16_decay_0999_matches_float64(form):
    """λ = 0.999 is 1.0 in bf16: a form that rounds the decay to the input dtype is 20 % off at T = 300."""
    a = _arrays(1, 1, 300, 8, 8, seed=3)
    q, k, v = _bf16(a["q"], a["k"], a["v"])
    want, _ = oracles.decayed_linear_attention(*(x.double().numpy() for x in (q, k, v)), [0.999])
    fn = getattr(ref_lightning, form)
    out = fn(q, k, v, [0.999], **({"chunk_size": 64} if form == "chunked" else {}))
    o = out if form == "parallel" else out[0]
    assert o.dtype == torch.bfloat16
    assert rel_err(o.double(), want) < 2**-7  # bf16 rounding of the output (2^-9) with room


@pytest.mark.parametrize("form", ["recurrent", "parallel", "chunked"])
def test_gla_bf16_gates_match_float64(form):
    """Gates near 1 over 200 tokens (α = 0.999): bf16 inputs, float64 answer, bf16's error."""
    a = _arrays(1, 1, 200, 4, 4, seed=4)
    log_alpha = np.full((1, 1, 200, 4), np.log(0.999))
    q, k, v, g = _bf16(a["q"], a["k"], a["v"], log_alpha)
    want, _ = oracles.gated_linear_attention(*(x.double().numpy() for x in (q, k, v, g)))
    fn = getattr(ref_gla, form)
    out = fn(q, k, v, g, **({"chunk_size": 64} if form == "chunked" else {}))
    o = out if form == "parallel" else out[0]
    assert o.dtype == torch.bfloat16
    assert rel_err(o.double(), want) < 2**-7


# --------------------------------------------------------------------------------------------
# Bad inputs: each a clear error naming its argument
# --------------------------------------------------------------------------------------------

_X = np.ones((1, 2, 3, 2))
_LA = -np.ones((1, 2, 3, 2))


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: ref_lightning.chunked(_X, _X, _X, ["a", "b"]), "decay"),
        (lambda: ref_lightning.recurrent(_X, _X, _X, "0.9"), "decay"),
        (lambda: ref_lightning.decay_mask(["x"], 3), "decay"),
        (lambda: ref_lightning.decay_mask("0.9", 3), "decay"),
        (lambda: ref_lightning.chunked_backward(_X, _X, _X, [0.5, 0.9], _X, return_initial_state_grad="yes"),
         "return_initial_state_grad"),
        (lambda: ref_gla.chunked_backward(_X, _X, _X, _LA, _X, return_initial_state_grad=1), "return_initial_state_grad"),
        (lambda: ref_gla.chunked(_X, _X, _X, np.where(_LA < 0, np.nan, 0.0)), "log_alpha"),
        (lambda: ref_gla.parallel(_X, _X, _X, -_LA), "log_alpha"),
        (lambda: ref_gla.chunked(_X, _X, _X, _LA, materialize="no"), "materialize"),
        (lambda: ref_softmax.tiled(_X, _X, _X, return_lse="yes"), "return_lse"),
        (lambda: k_lightning.attention(_t(_X), _t(_X), _t(_X), [0.5, 0.9], output_final_state="no"), "output_final_state"),
        (lambda: k_gla.attention(_t(_X), _t(_X), _t(_X), _t(_LA), output_final_state="yes"), "output_final_state"),
    ],
)  # fmt: skip
def test_bad_input_names_its_argument(call, argument):
    with pytest.raises((TypeError, ValueError), match=rf"\b{argument}\b"):
        call()


def test_minus_inf_gates_are_accepted_and_nan_gates_rejected():
    la = _LA.copy()
    la[..., 1, :] = -np.inf
    o, _ = ref_gla.chunked(_X, _X, _X, la)
    assert np.isfinite(o).all()
    la[..., 2, 0] = np.nan
    with pytest.raises(ValueError, match="log_alpha"):
        ref_gla.recurrent(_X, _X, _X, la)


@pytest.mark.parametrize("form", ["recurrent", "parallel", "chunked"])
def test_gla_autograd_with_resets_equals_the_oracle(form):
    """Autograd through every torch form with -inf gates: finite, and the float64 oracle's derivative."""
    rng = np.random.default_rng(5)
    B, H, T, K, V = 1, 2, 23, 3, 4
    q, k, v, do = (rng.standard_normal((B, H, T, d)) for d in (K, K, V, V))
    la = reset_gates(rng, (B, H, T, K))
    leaves = [torch.from_numpy(x).requires_grad_() for x in (q, k, v, la)]
    out = getattr(ref_gla, form)(*leaves, **({"chunk_size": 8, "sub_chunk": 3} if form == "chunked" else {}))
    o = out if form == "parallel" else out[0]
    (o * torch.from_numpy(do)).sum().backward()
    want = oracles.gated_linear_attention_grads(q, k, v, la, do)
    for name, leaf, w in zip(("dq", "dk", "dv", "dlog_alpha"), leaves, want):
        assert torch.isfinite(leaf.grad).all(), name
        assert rel_err(leaf.grad, w) < 1e-9, (name, rel_err(leaf.grad, w))


@pytest.mark.parametrize("huge", [-1e6, -1e20])
@pytest.mark.parametrize("form", ["recurrent", "parallel", "chunked", "kernel"])
def test_gla_one_huge_gate_keeps_float32_precision(form, huge):
    """One step with log α = -1e6 or -1e20 (finite): float32 inputs stay within float32's error of float64.
    (A difference of cumulative sums loses every later gate to cancellation: 83 % error at -1e20.)"""
    a = _arrays(1, 2, 40, 4, 4, seed=6)
    a["log_alpha"][..., 13, :] = huge
    want, _ = oracles.gated_linear_attention(*(a[n].astype(np.float32).astype(np.float64) for n in ("q", "k", "v", "log_alpha")))
    q, k, v, g = (torch.from_numpy(a[n].astype(np.float32)) for n in ("q", "k", "v", "log_alpha"))
    if form == "kernel":
        o = k_gla.attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), g.to(DEVICE), config=k_gla.Config(chunk_size=CHUNK)).cpu()
    else:
        out = getattr(ref_gla, form)(q, k, v, g, **({"chunk_size": 16} if form == "chunked" else {}))
        o = out if form == "parallel" else out[0]
    assert rel_err(o.double(), want) < 1e-5


@pytest.mark.parametrize("form", ["recurrent", "parallel", "chunked"])
def test_linear_attention_bf16_state_matches_float64(form):
    """A state summed in bf16 over 300 tokens drifts by percents; every form sums in at least float32."""
    from reference import linear_attention as ref_linear

    a = _arrays(1, 1, 300, 8, 8, seed=7)
    q, k, v = _bf16(a["q"], a["k"], a["v"])
    want, _ = oracles.decayed_linear_attention(*(x.double().numpy() for x in (q, k, v)))
    out = getattr(ref_linear, form)(q, k, v, **({"chunk_size": 64} if form == "chunked" else {}))
    o = out if form == "parallel" else out[0]
    assert o.dtype == torch.bfloat16
    assert rel_err(o.double(), want) < 2**-7
