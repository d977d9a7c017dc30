"""``python -m kernels``: the Triton kernels against float64 oracles on a small example.

On a GPU if there is one, otherwise in Triton's CPU interpreter, which this command switches on
itself (before the first import of a kernel module). Each kernel's output is compared with the
parallel form of its reference function in float64; the table is ``python -m reference``'s.
"""

from __future__ import annotations

import argparse
import os
import sys


def _rows():
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of a kernel module
    device = "cuda" if torch.cuda.is_available() else "cpu"
    import numpy as np

    from kernels import block_sparse as block_sparse_kernel
    from kernels import double_sparsity as double_sparsity_kernel
    from kernels import gla as gla_kernel
    from kernels import lightning as lightning_kernel
    from reference import double_sparsity, gla, lightning, seer
    from reference.__main__ import example, timed

    q, k, v, _, log_alpha = example(B=1, H=2, T=80)
    q64, k64, v64, la64 = (x.astype(np.float64) for x in (q, k, v, log_alpha))
    decay = lightning.tnl_decay(2)
    scale = q.shape[-1] ** -0.5
    tq, tk, tv, tla = (torch.from_numpy(x).to(device) for x in (q, k, v, log_alpha))
    where = "GPU" if device == "cuda" else "interpreter"
    rows = []
    out, seconds = timed(lambda: lightning_kernel.attention(tq, tk, tv, decay, scale=scale).cpu().numpy())
    rows.append(("Lightning Attention-2", f"Triton kernel ({where})", out,
                 lightning.parallel(q64, k64, v64, decay, scale=scale), seconds))  # fmt: skip
    out, seconds = timed(lambda: gla_kernel.attention(tq, tk, tv, tla, scale=scale).cpu().numpy())
    rows.append(("Gated Linear Attention", f"Triton kernel ({where})", out,
                 gla.parallel(q64, k64, v64, la64, scale=scale), seconds))  # fmt: skip

    mask = seer.select_topk(seer.ground_truth(q64, k64, block=16), density=0.5)
    out, seconds = timed(lambda: block_sparse_kernel.attention(tq, tk, tv, torch.from_numpy(mask).to(device),
                                                               block=16).cpu().numpy())  # fmt: skip
    rows.append(("SeerAttention", f"Triton kernel ({where})", out,
                 seer.block_sparse_attention(q64, k64, v64, mask, block=16), seconds))  # fmt: skip

    top_k = 24  # of the 80 cached tokens
    channels = np.tile(np.arange(4), (q.shape[1], 1))  # four heavy channels of every kv head
    out, seconds = timed(lambda: double_sparsity_kernel.decode(tq[:, :, -1], tk, tv, torch.from_numpy(channels).to(device),
                                                               top_k=top_k).cpu().numpy())  # fmt: skip
    rows.append(("Double Sparsity", f"Triton kernel ({where})", out,
                 double_sparsity.decode(q64[:, :, -1], k64, v64, channels, top_k=top_k), seconds))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    from reference.__main__ import report

    title = ("Every kernel, float32, against a float64 oracle (B=1, H=2, T=80, K=V=16; SeerAttention at density "
             "0.5 in blocks of 16; Double Sparsity: the last token, 4 label channels, top_k = 24)")  # fmt: skip
    return report(_rows(), title)


if __name__ == "__main__":
    sys.exit(main())
