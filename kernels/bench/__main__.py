"""``python -m kernels.bench <name> [options]``: run one benchmark on a CUDA GPU.

Each benchmark lives in ``kernels/bench/<name>.py`` and exposes ``main(argv) -> int``.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("lightning", "gla", "block_sparse", "double_sparsity")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m kernels.bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("kernels.bench needs a CUDA GPU (the kernels' speed is only meaningful there)", file=sys.stderr)
        return 2
    module = importlib.import_module(f"kernels.bench.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
