"""Exercise: block-sparse causal attention, one row of kept key blocks at a time (``docs/seer.md``).

SeerAttention picks, for each block of ``block`` queries, which key blocks to attend to; the
attention itself then walks only those. Write ``block_sparse_attention`` below with NumPy:

* cut ``T`` into blocks of ``block`` tokens (the last one may be shorter), ``n = ceil(T / block)``;
* for each batch, head and query block ``i``, walk the key blocks ``j`` with ``block_mask[b, h, i, j]``
  true, left to right, keeping per query row the running maximum ``m``, the running sum
  ``l = Σ exp(s − m)`` and the running output ``acc = Σ exp(s − m) v``; when a block raises ``m`` to
  ``m'``, rescale ``l`` and ``acc`` by ``exp(m − m')`` first (the online softmax);
* inside the diagonal block (``j = i``) mask the keys after each query (causal);
* the output rows are ``acc / l``. Never read a block the mask drops.

Shapes: ``q: [B, H, T, D]``; ``k: [B, Hkv, T, D]`` and ``v: [B, Hkv, T, V]`` with ``Hkv`` dividing
``H`` (query head ``h`` reads kv head ``h // (H // Hkv)``); ``block_mask``: bool ``[B, H, n, n]``,
block-causal, the diagonal kept. ``scale=None`` means ``D ** -0.5``. Return ``o: [B, H, T, V]``.

Grade it (the SeerAttention suite; it runs the properties of the functions this file defines)::

    python -m reference.testing seer lessons/exercises/block_sparse_row_walk.py
"""

import numpy as np  # noqa: F401  (you will need it)


def block_sparse_attention(q, k, v, block_mask, *, block=64, scale=None):
    raise NotImplementedError("the block-sparse row walk: write me (see the module docstring)")
