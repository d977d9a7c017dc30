"""Mutant: GLA's gate scales the value axis of the state, S_t = S_{t-1} Diag(α_t) + k_tᵀ v_t.

The gate is Diag(α_t) on the left: it scales the K key rows of the K × V state
(``docs/errata.md``, erratum 5). On the right it needs K = V to run at all, and is wrong then.
"""

import numpy as np

from reference import gla

ALGORITHM = "gla"
CAUGHT_BY = ("recurrent_equals_the_oracle",)


def recurrent(q, k, v, log_alpha, *, scale=1.0, initial_state=None):
    gla.recurrent(q, k, v, log_alpha, scale=scale, initial_state=initial_state)  # the checks
    B, H, T, K = q.shape
    state = np.zeros((B, H, K, v.shape[-1])) if initial_state is None else initial_state
    out = []
    for t in range(T):
        alpha_t = np.exp(log_alpha[..., t, :])  # [B, H, K]
        state = state * alpha_t[..., None, :] + k[..., t, :, None] * v[..., t, None, :]  # should be [..., :, None]
        out.append((q[..., t : t + 1, :] * scale) @ state)
    return np.concatenate(out, axis=-2), state
