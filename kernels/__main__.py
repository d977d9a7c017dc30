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

    from kernels import gla as gla_kernel
    from kernels import lightning as lightning_kernel
    from reference import gla, lightning
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
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    from reference.__main__ import report

    return report(_rows(), "Every kernel, float32, against a float64 oracle (B=1, H=2, T=80, K=V=16)")


if __name__ == "__main__":
    sys.exit(main())
