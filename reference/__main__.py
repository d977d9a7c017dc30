"""``python -m reference``: a ten-second tour of every algorithm in every form.

Each form runs on one small built-in example in float32 (NumPy) and is compared with a float64
oracle of the same algorithm (its direct, parallel form, itself proven against independent oracles
by the test suite). The table shows the largest absolute error and the CPU time of each form.

The Triton kernels have their own tour, ``python -m kernels`` (the reference imports nothing above it).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def timed(fn):
    """``(fn(), seconds)``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def example(seed: int = 0, B: int = 2, H: int = 4, T: int = 100, K: int = 16, V: int = 16):
    """Small float32 inputs: T = 100 is no multiple of the chunk sizes used below."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, T, K)).astype(np.float32)
    k = rng.standard_normal((B, H, T, K)).astype(np.float32)
    v = rng.standard_normal((B, H, T, V)).astype(np.float32)
    do = rng.standard_normal((B, H, T, V)).astype(np.float32)
    log_alpha = (np.log(rng.uniform(0.02, 1.0, size=(B, H, T, K)))).astype(np.float32)
    return q, k, v, do, log_alpha


def _rows():
    """(algorithm, form, float32 result, float64 oracle, seconds) for every reference form."""
    from reference import double_sparsity, gla, lightning, linear_attention, seer, softmax_attention

    q, k, v, do, log_alpha = example()
    q64, k64, v64, do64, la64 = (x.astype(np.float64) for x in (q, k, v, do, log_alpha))
    decay = lightning.tnl_decay(q.shape[1])
    scale = q.shape[-1] ** -0.5
    rows = []

    def add(algorithm, form, fn, oracle):
        out, seconds = timed(fn)
        if isinstance(out, tuple):  # recurrent/chunked forms return (o, state); backward (dq, dk, dv)
            if form.startswith("chunked_backward"):
                out, oracle = np.concatenate([x.ravel() for x in out]), np.concatenate([x.ravel() for x in oracle])
            else:
                out = out[0]
        rows.append((algorithm, form, out, oracle, seconds))

    ref = softmax_attention.naive(q64, k64, v64)
    add("softmax attention", "naive", lambda: softmax_attention.naive(q, k, v), ref)
    add("softmax attention", "tiled (online softmax)", lambda: softmax_attention.tiled(q, k, v, block_q=32, block_k=32), ref)

    ref = linear_attention.parallel(q64, k64, v64, scale=scale)
    add("linear attention", "recurrent", lambda: linear_attention.recurrent(q, k, v, scale=scale), ref)
    add("linear attention", "parallel", lambda: linear_attention.parallel(q, k, v, scale=scale), ref)
    add("linear attention", "chunked (C=32)", lambda: linear_attention.chunked(q, k, v, scale=scale, chunk_size=32), ref)

    ref = lightning.parallel(q64, k64, v64, decay, scale=scale)
    add("Lightning Attention-2", "recurrent", lambda: lightning.recurrent(q, k, v, decay, scale=scale), ref)
    add("Lightning Attention-2", "parallel", lambda: lightning.parallel(q, k, v, decay, scale=scale), ref)
    add("Lightning Attention-2", "chunked (Alg. 1, C=32)", lambda: lightning.chunked(q, k, v, decay, scale=scale, chunk_size=32), ref)
    grads = _lightning_autograd(q64, k64, v64, decay, do64, scale)
    add(
        "Lightning Attention-2",
        "chunked_backward (Alg. 2)",
        lambda: lightning.chunked_backward(q, k, v, decay, do, scale=scale, chunk_size=32),
        grads,
    )

    ref = gla.parallel(q64, k64, v64, la64, scale=scale)
    add("Gated Linear Attention", "recurrent", lambda: gla.recurrent(q, k, v, log_alpha, scale=scale), ref)
    add("Gated Linear Attention", "parallel (log space)", lambda: gla.parallel(q, k, v, log_alpha, scale=scale), ref)
    add("Gated Linear Attention", "chunked, non-materialised",
        lambda: gla.chunked(q, k, v, log_alpha, scale=scale, chunk_size=32), ref)  # fmt: skip
    add("Gated Linear Attention", "chunked, materialised",
        lambda: gla.chunked(q, k, v, log_alpha, scale=scale, chunk_size=32, materialize=True), ref)  # fmt: skip

    # SeerAttention's walk over every causal block equals dense causal attention; with a sparse mask
    # it equals attention under that mask (the dense form of the same blocks).
    B, H, T = q.shape[:3]
    nb = -(-T // 16)
    every = np.tril(np.ones((B, H, nb, nb), dtype=bool))
    add("SeerAttention", "block-sparse walk, all blocks", lambda: seer.block_sparse_attention(q, k, v, every, block=16),
        softmax_attention.naive(q64, k64, v64))  # fmt: skip
    mask = seer.select_topk(seer.ground_truth(q64, k64, block=16), density=0.3)
    add("SeerAttention", "block-sparse walk, density 0.3", lambda: seer.block_sparse_attention(q, k, v, mask, block=16),
        seer.masked_attention(q64, k64, v64, mask, block=16))  # fmt: skip

    # Double Sparsity decodes the last token over the cache; with every channel a label and the whole
    # cache as budget it is dense decoding.
    channels = np.tile(np.arange(k.shape[-1]), (H, 1))
    dense = softmax_attention.naive(q64[:, :, -1:], k64, v64)[:, :, 0]
    add("Double Sparsity", "decode, r = D, top_k = S",
        lambda: double_sparsity.decode(q[:, :, -1], k, v, channels, top_k=T), dense)  # fmt: skip
    return rows


def _lightning_autograd(q, k, v, decay, do, scale):
    """dq, dk, dv of the parallel form by torch autograd in float64: the oracle for Algorithm 2."""
    import torch

    from reference import lightning

    leaves = [torch.from_numpy(x).requires_grad_() for x in (q, k, v)]
    (lightning.parallel(*leaves, decay, scale=scale) * torch.from_numpy(do)).sum().backward()
    return tuple(x.grad.numpy() for x in leaves)


def report(rows, title: str) -> int:
    """Print ``(algorithm, form, result, oracle, seconds)`` rows as a table; 1 if any form is off."""
    started = time.perf_counter()
    print(title + "\n")
    header = f"{'algorithm':<24} {'form':<30} {'max |error|':>12} {'CPU ms':>9}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for algorithm, form, out, oracle, seconds in rows:
        err = float(np.max(np.abs(np.asarray(out, dtype=np.float64) - oracle)))
        worst = max(worst, err / max(1.0, float(np.max(np.abs(oracle)))))
        print(f"{algorithm:<24} {form:<30} {err:>12.2e} {seconds * 1e3:>9.1f}")
    total = sum(row[-1] for row in rows) + time.perf_counter() - started
    print(f"\n{len(rows)} forms in {total:.1f} s; worst error relative to the largest value: {worst:.1e}")
    if worst > 1e-3:
        print("ERROR: a form disagrees with its oracle beyond float32 rounding", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    return report(_rows(), "Every form, float32, against a float64 oracle (B=2, H=4, T=100, K=V=16)")


if __name__ == "__main__":
    sys.exit(main())
