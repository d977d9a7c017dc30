"""Exercise: chunked linear attention (``docs/linear_attention.md``; Lesson 2).

Write ``chunked`` below with NumPy. Linear attention's output is ``o_t = scale · q_t S_t`` with the
state ``S_t = Σ_{s ≤ t} k_sᵀ v_s`` (plus an initial state ``S_0``). The chunked form splits the
``T`` tokens into chunks of ``C`` (the last one may be shorter) and, for chunk ``i`` with
``S_[i]`` the state of every token *before* the chunk::

    O_i     = ((Q_i K_iᵀ) ⊙ M) V_i + Q_i S_[i]       # M: lower-triangular ones, diagonal included
    S_[i+1] = S_[i] + K_iᵀ V_i

Shapes: ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``initial_state: [B, H, K, V]`` or ``None``
(zeros). Return ``(o: [B, H, T, V], final_state: [B, H, K, V])``. A bad argument (wrong rank or
shape, ``chunk_size < 1``) should raise ``ValueError`` naming it.

Grade it (from the repository root; ``--backend torch`` if you write it with torch, which also runs
the gradient properties)::

    python -m reference.testing linear lessons/exercises/linear_chunked.py
"""

import numpy as np  # noqa: F401  (you will need it)


def chunked(q, k, v, *, scale=1.0, chunk_size=64, initial_state=None):
    raise NotImplementedError("chunked linear attention: write me (see the module docstring)")
