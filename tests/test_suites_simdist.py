"""The packaged LASP suite run against simdist: LASP-2's exclusive decayed prefix scan.

``simdist.lasp2.exclusive_prefix(states, lengths, rank, rates)`` is what each rank runs after the
AllGather; the adapter calls it for every rank and stacks the prefixes, which is the contract's
``prefix_scan``. Its inputs are checked once, in simdist's handshake, before any rank scans, so the
bad-input property (a check of ``prefix_scan`` itself) does not apply to this internal function;
``tests/test_lasp.py`` runs the schemes end to end on gloo ranks.
"""

from __future__ import annotations

import pytest
import torch

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


PARAMS = [pytest.param(p, id=p.name) for p in suite.PROPERTIES if "bad_inputs" not in p.name]


def test_every_value_property_runs():
    assert len(PARAMS) == len(suite.PROPERTIES) - 1 >= 2


@pytest.mark.parametrize("prop", PARAMS)
def test_suite(prop):
    prop.check(Lasp2Scan)
