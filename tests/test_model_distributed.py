"""The tiny LM's sequence-parallel training step on 4 gloo ranks equals one device (float64).

Each rank holds one contiguous chunk of every sequence (chunks of unequal length). Linear-family
layers run through ``simdist.lasp2.attention`` (decays for Lightning, gates for GLA), softmax
layers through ``simdist.lasp2h.attention``; everything else in the model is per token. Each rank's
loss is its tokens' summed cross-entropy over the total token count, so the ranks' losses add up
to the one-device mean; the step all-reduces the parameter gradients, as data-parallel training
does, and every rank must then hold exactly the one-device gradient of every parameter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import simdist
from reference import model as M

TOL = 1e-12
W = 4
LENGTHS = [5, 7, 4, 8]  # one chunk per rank, unequal on purpose
PATTERNS = {
    "softmax": ("softmax", "softmax"),
    "linear": ("linear", "linear"),
    "lightning": ("lightning", "lightning"),
    "gla": ("gla", "gla"),
    "hybrid-lightning": M.hybrid("lightning", 4),
    "mixed": ("gla", "softmax", "lightning", "linear"),
}


def small(attention):
    return M.Config(
        attention=tuple(attention), n_layers=len(attention), d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, ffn_hidden=48, max_len=64
    )


def problem(name: str, seed: int = 0):
    model = M.TinyLM(small(PATTERNS[name]), seed=seed).double()
    T = sum(LENGTHS)
    tokens = torch.randint(0, 256, (2, T + 1), generator=torch.Generator().manual_seed(seed + 1))
    return model, tokens


def one_device(model, tokens):
    loss, grads = M.step_gradients(model, tokens)
    return loss, grads, model(tokens[:, :-1]).detach()


@pytest.mark.parametrize("name", list(PATTERNS))
def test_sequence_parallel_step_equals_one_device(name):
    model, tokens = problem(name)
    want_loss, want_grads, want_logits = one_device(model, tokens)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = simdist.shared_pool(W, timeout=120).run(M.sequence_parallel_step, model.config.to_dict(), state, tokens, LENGTHS)
    got_logits = torch.cat([o[2] for o in out], dim=1)
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=TOL)
    for rank, (loss, grads, _) in enumerate(out):
        assert abs(loss - want_loss) < TOL, (rank, loss, want_loss)
        assert set(grads) == set(want_grads)
        for n, g in grads.items():
            scale = 1.0 + float(want_grads[n].abs().max())
            err = float((g - want_grads[n]).abs().max())
            assert err < TOL * scale, f"rank {rank}, {n}: max error {err:.2e}"
    # the gradients are not trivially zero: every parameter gets some
    assert all(float(g.abs().max()) > 0 for g in want_grads.values())


def test_start_shifts_rope_positions():
    """A chunk run alone with ``start`` rotates its queries and keys at their absolute positions."""
    model, tokens = problem("softmax")
    captured_full, captured_chunk = [], []
    model(tokens[:, :12], capture=captured_full)
    model(tokens[:, 5:12], capture=captured_chunk, start=5)
    torch.testing.assert_close(captured_chunk[0]["q"], captured_full[0]["q"][:, :, 5:12], rtol=0, atol=1e-12)
    torch.testing.assert_close(captured_chunk[0]["k"], captured_full[0]["k"][:, :, 5:12], rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        model(tokens[:, :12], start=60)
