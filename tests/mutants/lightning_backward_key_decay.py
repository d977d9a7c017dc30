"""Mutant: Algorithm 2's dK inter term scales V by Λ = diag(λ^j) instead of λⁿ Λ⁻¹ = diag(λ^(n-j)).

Key j of a chunk reaches the end of the chunk after n - j more steps, so its gradient through later
chunks carries λ^(n-j); Λ belongs to the queries. The forward is right, so only the manual
backward is caught.
"""

from reference import lightning
from reference._arrays import chunk_bounds, transpose
from reference.lightning import _block_factors, _check_decay

import array_api_compat.numpy as xp

ALGORITHM = "lightning"
CAUGHT_BY = ("chunked_backward_equals_the_oracle",)


def chunked_backward(q, k, v, decay, do, *, scale=1.0, chunk_size=64):
    dq, _, dv = lightning.chunked_backward(q, k, v, decay, do, scale=scale, chunk_size=chunk_size)
    log_decay = _check_decay(xp, decay, q.shape[1], like=q)
    blocks = chunk_bounds(q.shape[2], chunk_size)
    dkv = xp.zeros((*q.shape[:2], q.shape[-1], v.shape[-1]), dtype=q.dtype)
    dk = []
    for start, stop in reversed(blocks):
        q_decay, k_decay, block_decay, mask = _block_factors(xp, log_decay, stop - start, None, q.dtype)
        q_i, v_i, do_i = (x[..., start:stop, :] * s for x, s in ((q, scale), (v, 1.0), (do, 1.0)))
        dk_intra = transpose(xp, (do_i @ transpose(xp, v_i)) * mask) @ q_i
        dk.append(dk_intra + (q_decay * v_i) @ transpose(xp, dkv))  # should be k_decay
        dkv = block_decay * dkv + transpose(xp, q_decay * q_i) @ do_i
    return dq, xp.concat(dk[::-1], axis=-2), dv
