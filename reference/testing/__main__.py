"""``python -m reference.testing ALGORITHM TARGET``: grade an implementation against a property suite.

TARGET is a ``.py`` file or an importable module defining some of the algorithm's contract
functions. Every property of the functions it defines runs; the report says, per property, *held*
or *failed* with the shrunk counterexample, and lists the functions TARGET does not define. The
exit status is 0 iff every property that ran held (and at least one ran). See ``docs/coursework.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback


def main(argv=None) -> int:
    from reference.testing import grader, suites

    parser = argparse.ArgumentParser(
        prog="python -m reference.testing",
        description="Run an algorithm's property suite against an implementation (a .py file or a module).",
        epilog="Derandomised (the same examples every run) when the CI environment variable is set. "
        "A Triton kernel runs on a CPU in Triton's interpreter: set TRITON_INTERPRET=1.",
    )
    parser.add_argument("algorithm", choices=list(suites.SUITES), help="which suite")
    parser.add_argument("target", nargs="?", help="a .py file or an importable module defining some contract functions")
    parser.add_argument("--list", action="store_true", help="list the algorithm's contract and properties, and exit")
    parser.add_argument("--json", metavar="FILE", help="also write a Gradescope-style results.json to FILE")
    parser.add_argument("--max-examples", type=int, metavar="N", help=f"Hypothesis examples per property (default {grader.DEFAULT_EXAMPLES})")
    parser.add_argument("--backend", choices=["numpy", "torch"], help="the inputs' library (default: TARGET's BACKEND, else numpy); torch also runs the autograd properties")
    parser.add_argument("--tolerance", type=float, metavar="TOL", help="relative error accepted against the float64 oracles (default: each property's, about 1e-9)")
    parser.add_argument("--require", metavar="NAMES", default="", help="comma-separated contract functions TARGET must define")
    parser.add_argument("--only", metavar="NAMES", help="comma-separated property names to run")
    parser.add_argument("--skip", metavar="NAMES", default="", help="comma-separated property names not to run")
    parser.add_argument("--derandomize", action="store_true", help="the same examples every run (also when CI is set)")
    args = parser.parse_args(argv)
    if args.max_examples is not None and args.max_examples < 1:
        parser.error(f"--max-examples must be a positive integer, got {args.max_examples}")

    try:
        suite = suites.load(args.algorithm)
    except suites.SuiteUnavailable as err:
        print(f"{args.algorithm}: not available yet ({err})", file=sys.stderr)
        return 2
    if args.list:
        print(f"{args.algorithm}: contract {', '.join(suites.contract(suite))}")
        for p in suite.PROPERTIES:
            backends = "" if set(p.backends) == {"numpy", "torch"} else f" [{'/'.join(p.backends)} only]"
            print(f"  {p.name}  (needs {', '.join(p.needs)}){backends}\n      {' '.join(p.doc.split())}")
        return 0
    if args.target is None:
        parser.error("TARGET is required (or --list)")
    try:
        module = grader.load_target(args.target)
    except Exception as err:  # noqa: BLE001  (a student's file may fail to import in any way)
        text = f"could not load {args.target}:\n" + "".join(traceback.format_exception_only(type(err), err))
        print(text, file=sys.stderr)
        _write_json(args.json, {"score": 0.0, "output": text, "tests": [{"name": "load", "score": 0.0, "max_score": 1.0, "status": "failed", "output": text}]})
        return 1

    try:  # tiny tensors: intra-op threads only add synchronisation (this process is the grader's own)
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    require = tuple(x for x in args.require.split(",") if x)
    only = tuple(x for x in args.only.split(",") if x) if args.only else None
    skip = tuple(x for x in args.skip.split(",") if x)

    def progress(outcome):
        print(f"  {outcome.status:<15} {outcome.name}  ({outcome.seconds:.1f} s)", file=sys.stderr, flush=True)

    # Hypothesis caches what it learns under .hypothesis/ in the working directory: keep the
    # student's directory clean (this process is the grader's own, so its environment may change).
    with tempfile.TemporaryDirectory(prefix="reference-testing-") as scratch:
        os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", scratch)
        report = grader.grade(
            args.algorithm, module, max_examples=args.max_examples, derandomize=args.derandomize or None,
            backend=args.backend, tolerance=args.tolerance, only=only, skip=skip, require=require,
            target_name=args.target, progress=progress,
        )  # fmt: skip
    print(report.text())
    _write_json(args.json, report.gradescope())
    return 0 if report.ok else 1


def _write_json(path, data) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
