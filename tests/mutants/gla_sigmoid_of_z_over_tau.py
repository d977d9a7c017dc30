"""Mutant: GLA's gate as σ(z/τ) instead of σ(z)^(1/τ).

log α = logsigmoid(z) / τ is σ(z)^(1/τ): at z = 0 that is 0.5^(1/16) ≈ 0.958, a gate that starts out
remembering. σ(z/16) is 0.5 there, forgetting half the state every step (``docs/gla.md``).
"""

import numpy as np

ALGORITHM = "gla"
CAUGHT_BY = ("gate_equals_its_definition",)


def gate(x, w1, w2, b, *, tau=16.0):
    z = np.einsum("btd,dr,rhk->bhtk", x, w1, w2) + b[None, :, None, :]
    return -np.log1p(np.exp(-z / tau))  # log σ(z/τ)
