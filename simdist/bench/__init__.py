"""The GPU benchmarks of ``simdist``: what the schemes cost on real GPUs, and where the time goes.

* ``simdist.bench.schemes`` — ``python -m simdist.bench``: LASP-1, LASP-2, LASP-2H and Ring Attention
  (and one rank's local work alone) on every visible GPU over NCCL, or on gloo CPU ranks; writes
  ``docs/benchmarks/simdist_nccl.json`` and its plot.
* ``simdist.bench.timeline`` — ``python -m simdist.bench.timeline``: each rank's CUDA kernels during
  one profiled step.

Both run under ``torchrun`` as well (see ``docs/sequence_parallel.md``).
"""
