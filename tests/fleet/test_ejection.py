"""Outlier ejection's rules as a table (router.fleet.ejection): when failures trip an ejection,
how long each one in a row lasts, and how many of a model's backends may be out at once. The
policy is read from RoutingConfig, the one home of its defaults."""

from __future__ import annotations

import pytest

from router.config import EjectionPolicy, RoutingConfig
from router.fleet.ejection import MAX_GROWTH, may_eject, next_ejection, tripped
from router.state.base import Ejection
from router.state.samples import Summary

DEFAULT = EjectionPolicy.of(RoutingConfig())


def test_the_defaults_are_the_configs():
    assert EjectionPolicy(after_failures=3, base_s=15.0, error_rate=0.5, min_requests=20, max_share=0.5) == DEFAULT
    custom = EjectionPolicy.of(RoutingConfig(eject_after_failures=2, eject_seconds=0.4, max_ejected_share=1))
    assert (custom.after_failures, custom.base_s, custom.max_share) == (2, 0.4, 1)


@pytest.mark.parametrize(
    ("summary", "probe", "expected"),
    [
        (Summary(requests=3, failures=2, trailing_failures=2), False, False),
        (Summary(requests=3, failures=3, trailing_failures=3), False, True),  # three in a row
        (Summary(requests=19, failures=15, trailing_failures=1), False, False),  # too few to count a rate
        (Summary(requests=20, failures=10, trailing_failures=1), False, True),  # half of twenty
        (Summary(requests=20, failures=9, trailing_failures=1), False, False),
        (Summary(requests=1, failures=1, trailing_failures=1), True, True),  # a failed probe
    ],
)
def test_what_trips_an_ejection(summary, probe, expected):
    assert tripped(DEFAULT, summary, probe=probe) is expected


@pytest.mark.parametrize(
    ("share", "group", "out", "expected"),
    [
        (0.5, 4, 1, True),
        (0.5, 4, 2, False),
        (0.5, 1, 0, True),  # at least one may go
        (0.5, 3, 1, False),  # floor(1.5) = 1
        (1.0, 3, 2, True),
    ],
)
def test_how_many_may_be_out_at_once(share, group, out, expected):
    policy = EjectionPolicy.of(RoutingConfig(max_ejected_share=share))
    assert may_eject(policy, group, out) is expected


def test_each_ejection_in_a_row_lasts_longer_up_to_the_cap():
    first, keep = next_ejection(DEFAULT, None, 1000.0)
    assert (first, keep) == (Ejection(1015.0, 1), 15.0 * (1 + MAX_GROWTH))
    second, _ = next_ejection(DEFAULT, first, 2000.0)
    assert second == Ejection(2030.0, 2)
    late, _ = next_ejection(DEFAULT, Ejection(0.0, 40), 0.0)
    assert late == Ejection(15.0 * MAX_GROWTH, 41)
