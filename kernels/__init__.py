"""Triton GPU kernels, one module per algorithm, each matching a function of ``reference``.

* ``kernels.lightning.attention(q, k, v, decay, *, scale=1.0, config=None)`` — Lightning Attention-2.
* ``kernels.gla.attention(q, k, v, log_alpha, *, scale=1.0, config=None)`` — Gated Linear Attention.
* ``kernels.block_sparse.attention(q, k, v, block_mask, *, block=64, scale=None, config=None)`` —
  SeerAttention's block-sparse causal attention (forward only); ``kernels.seer.ground_truth`` and
  ``kernels.seer.pool`` — the gate's training target and its block pooling.
* ``kernels.double_sparsity.decode(q, k_cache, v_cache, channels, *, top_k, scale=None, config=None)``
  — one Double Sparsity decoding step; ``kernels.double_sparsity_offload`` decodes with the KV cache
  in CPU memory.

They run on CUDA GPUs, and on the CPU in Triton's interpreter when ``TRITON_INTERPRET=1`` is set
before ``kernels`` is first imported (slow, exact ``tl.dot``; for tests and lessons on small shapes).
``python -m kernels`` runs each kernel once against a float64 oracle.

The shape of a kernel module
----------------------------
Every module here (``lightning``, ``gla``, and the block-sparse and decode kernels after them) has
the same parts, so that a reader who knows one knows them all:

1. **A frozen ``Config`` dataclass** of launch settings (tiles, warps, stages, strategy switches),
   and ``DEFAULT_CONFIG = Config()``. Settings change speed, never the function computed (beyond
   rounding); the benchmark sweeps them by passing ``config=``, never by overwriting module state.
   A module may offer ``config_for(...)`` when the default depends on the GPU's size.
2. **One public entry function** (``attention``, ``decode``) with head-first tensors, keyword-only
   options and ``config: Config | None = None`` last; ``None`` means the default. It is
   differentiable where the algorithm trains, through a private ``torch.autograd.Function``.
3. **Entry checks from ``kernels._triton``**, not rewritten per module: ``check_qkv`` (shapes,
   dtypes, one device, CUDA or the interpreter), ``check_scale``, ``check_flag``, ``check_chunk_size``,
   ``check_initial_state``, ``check_config``. Wrong types raise ``TypeError``, wrong values
   ``ValueError``, each naming the argument, what it got and what it needs.
4. **Every buffer a kernel writes comes from ``_triton.empty``** (uninitialised: the kernels write
   every element). Tests prove that claim under ``with _triton.poisoned_outputs():``, where those
   buffers start as NaN.
5. **Every launch goes through ``_triton.launch(kernel, grid, *args, **kwargs)``**, so that
   ``kernels.tools`` can record a call's launches on ``meta`` tensors and compile them for an
   H100 (``sm_90``) on a machine without a GPU, reporting shared memory, registers and spills.
6. **The interpreter's bf16 path**: where ``_triton.interpreter_upcasts(dtype)`` is true (bf16 under
   ``TRITON_INTERPRET=1``, whose bf16 arithmetic is wrong), the entry function calls itself in fp32
   and rounds the result back. On a GPU bf16 runs as bf16.
7. **A benchmark** in ``kernels/bench/<name>.py`` exposing ``main(argv) -> int`` and run as
   ``python -m kernels.bench <name>`` on a GPU; it calls only public functions (``attention``,
   ``Config``, ``config_for``) and the helpers of ``kernels/bench/common.py``, and writes its JSON
   and plot into ``docs/benchmarks/``.
"""
