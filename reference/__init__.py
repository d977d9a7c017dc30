"""Readable NumPy/PyTorch versions of every algorithm: the oracle for ``kernels`` and ``simdist``.

One module per algorithm, one function per form. Each form is written once against the array API,
so NumPy arrays in give NumPy arrays out and torch tensors in give differentiable torch tensors out.

* ``reference.softmax_attention`` — ``naive``, ``tiled`` (online softmax, FlashAttention-2 tiling).
* ``reference.linear_attention`` — ``recurrent``, ``parallel``, ``chunked``.
* ``reference.lightning`` — Lightning Attention-2: ``recurrent``, ``parallel``, ``chunked``,
  ``chunked_backward``, ``decay_mask``, ``tnl_decay``.

``python -m reference`` runs a short tour of every form and prints its error and time.
"""
