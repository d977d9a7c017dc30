"""The packaged LASP suite run against simdist: LASP-2's exclusive decayed prefix scan, and LASP-1
and LASP-2 on gloo ranks.

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


@pytest.mark.parametrize("scheme", ["lasp1", "lasp2"])
def test_schemes_on_gloo_ranks(scheme):
    """``simdist.lasp1.attention`` and ``simdist.lasp2.attention`` on 2 and 3 gloo ranks (one pool per
    size for the whole session, shared with tests/test_lasp.py)."""
    prop = next(p for p in suite.PROPERTIES if p.name == "attention_on_ranks_equals_one_device")
    prop.check(Target(importlib.import_module(f"simdist.{scheme}"), backend="torch"))
