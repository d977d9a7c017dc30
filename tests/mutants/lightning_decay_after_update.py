"""Mutant: the recurrence decays after adding the token, S_t = λ (S_{t-1} + k_tᵀ v_t).

The recurrence is S_t = λ S_{t-1} + k_tᵀ v_t: the newest token enters undecayed. Decaying after the
update scales every term by one λ too many (``docs/lightning.md``).
"""

import numpy as np

from reference import lightning

ALGORITHM = "lightning"
CAUGHT_BY = ("recurrent_equals_the_oracle",)


def recurrent(q, k, v, decay, *, scale=1.0, initial_state=None):
    lightning.recurrent(q[..., :1, :], k[..., :1, :], v[..., :1, :], decay, scale=scale, initial_state=initial_state)  # the checks
    lam = np.asarray(decay, dtype=np.float64)[:, None, None]
    B, H, T, K = q.shape
    state = np.zeros((B, H, K, v.shape[-1])) if initial_state is None else initial_state
    out = []
    for t in range(T):
        state = lam * (state + k[..., t, :, None] * v[..., t, None, :])
        out.append((q[..., t : t + 1, :] * scale) @ state)
    return np.concatenate(out, axis=-2), state
