"""The property suites, packaged: the grader for coursework (``docs/coursework.md``).

Like ``numpy.testing`` and ``torch.testing``, this is installed with the package (it needs
Hypothesis: ``pip install "attention-atlas[test]"``):

* ``strategies`` — Hypothesis strategies for problem sizes, inputs (drawn as a seed), chunk sizes,
  decays and gates, and whole problems as printable ``Case`` objects;
* ``oracles`` — float64 oracles written as the defining sums, one position at a time, and their
  gradients; they share no code with ``reference`` or anything else they check
  (``oracles_seer``, ``oracles_double_sparsity``: the sparse half's);
* ``suites`` — one module per algorithm (``softmax``, ``linear``, ``lightning``, ``gla``, ``lasp``,
  ``seer``, ``double_sparsity``), each a list ``PROPERTIES`` of ``Property(name, needs, check)``
  whose ``check(impl)`` runs against any object with the contract functions as attributes;
* ``checks`` — ``assert_close`` and ``assert_rejects`` (readable failures) and ``Target`` (a module
  with the array library and tolerance to feed it);
* ``grader`` — ``grade(algorithm, impl)`` and ``load_target(path_or_module)``; the command line
  ``python -m reference.testing ALGORITHM TARGET`` and ``pytest_plugin`` wrap it.

The project's own tests run these same suites against ``reference``, the kernels and ``simdist``.
"""
