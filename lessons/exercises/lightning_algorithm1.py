"""Exercise: Lightning Attention-2's Algorithm 1, the chunked forward (arXiv 2401.04658; ``docs/lightning.md``).

Write ``chunked`` below with NumPy. Each head ``h`` has a rate ``λ = decay[h] ∈ (0, 1]``; the
recurrence is ``S_t = λ S_{t-1} + k_tᵀ v_t`` and ``o_t = scale · q_t S_t``. For a chunk of ``n``
tokens (local index ``j = 1..n``; the last chunk may be shorter), with ``KV`` the state before it::

    O_intra = [(Q Kᵀ) ⊙ D] V                 # D[t, s] = λ^(t-s) for t ≥ s, 0 above the diagonal
    O_inter = Λ Q KV                         # Λ = diag(λ¹, …, λⁿ): row j decayed by λ^j
    KV      = λⁿ KV + (λⁿ Λ⁻¹ K)ᵀ V          # row j of K scaled by λ^(n-j)

Form every power with a non-negative exponent (``λ^(n-j)``, never ``λⁿ · λ^-j``): the grader tries
``λ = 0.3`` over 200 tokens in float32, where ``0.3^-199`` overflows.

Shapes: ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``decay: [H]``, ``initial_state: [B, H, K, V]``
or ``None``. Return ``(o: [B, H, T, V], final_state: [B, H, K, V])``. Bad arguments raise
``ValueError`` naming them (``decay`` outside ``(0, 1]`` or of the wrong length, ``chunk_size < 1``).

Grade it::

    python -m reference.testing lightning lessons/exercises/lightning_algorithm1.py
"""

import numpy as np  # noqa: F401  (you will need it)


def chunked(q, k, v, decay, *, scale=1.0, chunk_size=64, initial_state=None):
    raise NotImplementedError("Lightning Attention-2, Algorithm 1: write me (see the module docstring)")
