"""Triton GPU kernels, one module per algorithm, each matching a function of ``reference``.

* ``kernels.lightning.attention(q, k, v, decay, *, scale=1.0)`` — Lightning Attention-2.
* ``kernels.gla.attention(q, k, v, log_alpha, *, scale=1.0)`` — Gated Linear Attention.

They run on CUDA GPUs, and on the CPU in Triton's interpreter when ``TRITON_INTERPRET=1`` is set
before ``kernels`` is first imported (slow, exact ``tl.dot``; for tests and lessons on small shapes).

``python -m kernels.bench <name>`` measures a kernel beside its peers on a GPU.
"""
