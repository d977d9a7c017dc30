"""Readable NumPy/PyTorch versions of every algorithm: the oracle for ``kernels`` and ``simdist``.

One module per algorithm, one function per form. Each form is written once against the array API,
so NumPy arrays in give NumPy arrays out and torch tensors in give differentiable torch tensors out.
The package imports nothing above it (neither ``kernels`` nor ``simdist``; only
``reference.model``'s sequence-parallel path imports ``simdist``, when it is asked for). Wrong types raise
``TypeError``, wrong values ``ValueError``, each naming the argument.

* ``reference.softmax_attention`` — ``naive``, ``tiled`` (online softmax, FlashAttention-2 tiling),
  ``online_softmax_update``.
* ``reference.linear_attention`` — ``recurrent``, ``parallel``, ``chunked``.
* ``reference.lightning`` — Lightning Attention-2: ``recurrent``, ``parallel``, ``chunked``,
  ``chunked_backward``, ``decay_mask``, ``tnl_decay``.
* ``reference.gla`` — Gated Linear Attention: ``recurrent``, ``parallel``, ``chunked``, ``gate``.
* ``reference.rope`` — rotary position embeddings: ``apply`` (rotate-half or interleaved layout),
  ``layout_permutation``.
* ``reference.seer`` — SeerAttention: ``pool``, ``AttnGate``, ``ground_truth`` (and ``ground_truth_tiled``),
  ``kl_loss``, ``select_topk``, ``select_threshold``, ``block_sparse_attention``; ``train_gates``.
* ``reference.double_sparsity`` — Double Sparsity: ``channel_outliers``, ``heavy_channels``,
  ``LabelCache``, ``decode``, ``decode_with_labels``, ``causal_decode``, ``label_sparsity``.
* ``reference.model`` and ``reference.data`` — a tiny Llama-style decoder whose attention is any
  algorithm here, and the text it trains on.
* ``reference.testing`` — the property suites, strategies and float64 oracles, packaged for grading
  coursework (``python -m reference.testing ALGORITHM TARGET``).

``python -m reference`` runs a short tour of every form and prints its error and time;
``python -m kernels`` does the same for the Triton kernels.
"""
