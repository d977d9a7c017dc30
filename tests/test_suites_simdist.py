"""The packaged suites run against simdist: LASP-2's exclusive decayed prefix scan, and every
scheme on gloo ranks (LASP-1 and LASP-2 by the ``lasp`` suite, LASP-2H and Ring Attention by the
``softmax`` suite).

``simdist.lasp2.exclusive_prefix(states, lengths, rank, rates)`` is what each rank runs after the
AllGather; the adapter calls it for every rank and stacks the prefixes, which is the contract's
``prefix_scan``. Its inputs are checked once, in simdist's handshake, before any rank scans, so the
bad-input property (a check of ``prefix_scan`` itself) does not apply to this internal function;
``tests/test_lasp.py`` runs the schemes end to end on gloo ranks.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from reference.testing import suites
from reference.testing.checks import Target
from reference.testing.suites import lasp as suite
from simdist import lasp2, local


class Lasp2Scan:
    """``simdist.lasp2.exclusive_prefix`` for every rank, stacked: the contract's ``prefix_scan``."""

    BACKEND = "torch"

    @staticmethod
    def prefix_scan(states, lengths, decay=None):
        rates = local.rates(decay)
        per_rank = list(states.unbind(0))
        return torch.stack([lasp2.exclusive_prefix(per_rank, list(lengths), r, rates) for r in range(len(per_rank))])


PARAMS = [pytest.param(p, id=p.name) for p in suite.PROPERTIES if p.needs == ("prefix_scan",) and "bad_inputs" not in p.name]


def test_every_value_property_runs():
    assert len(PARAMS) == 2


@pytest.mark.parametrize("prop", PARAMS)
def test_suite(prop):
    prop.check(Lasp2Scan)


@pytest.mark.parametrize(
    "algorithm, scheme", [("lasp", "lasp1"), ("lasp", "lasp2"), ("softmax", "lasp2h"), ("softmax", "ring")]
)
def test_schemes_on_gloo_ranks(algorithm, scheme):
    """Each scheme's ``attention`` on 2 and 3 gloo ranks against one device (one pool per size for the
    whole session, shared with tests/test_lasp.py): the linear ones (``lasp`` suite) and the softmax
    ones (``softmax`` suite)."""
    prop = next(p for p in suites.load(algorithm).PROPERTIES if p.name == "attention_on_ranks_equals_one_device")
    prop.check(Target(importlib.import_module(f"simdist.{scheme}"), backend="torch"))
