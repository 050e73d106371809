"""Outlier ejection's rules: when failures eject a backend for a model, for how long, and how many
of a model's backends may be out at once.

Pure functions over the stats book's figures and the policy from config, so the rules read in one
place and can be tested with a table; ``StatsBook`` keeps the bookkeeping and the store's records.
"""

from __future__ import annotations

import math

from router.config import EjectionPolicy
from router.state.base import Ejection
from router.state.samples import Summary

PROBE_LEASE_S = 30.0  # a probe holder that dies frees the probe after this
MAX_GROWTH = 10  # the n-th ejection in a row lasts n x base, at most this many x base


def tripped(policy: EjectionPolicy, s: Summary, *, probe: bool) -> bool:
    """A failure ejects when it is a half-open backend's probe, ends a run of failures in a row,
    or lifts the failure rate over enough attempts to count."""
    return (
        probe
        or s.trailing_failures >= policy.after_failures
        or (s.requests >= policy.min_requests and s.error_rate >= policy.error_rate)
    )


def may_eject(policy: EjectionPolicy, group_size: int, others_out: int) -> bool:
    """Never more than ``max_share`` of a model's backends out at once (at least one may go)."""
    return others_out < max(1, math.floor(policy.max_share * group_size + 1e-9))


def next_ejection(policy: EjectionPolicy, previous: Ejection | None, now: float) -> tuple[Ejection, float]:
    """The next ejection in a row, and how long the store keeps its record: past its end, so that
    the next ejection in a row lasts longer."""
    base = policy.base_s
    count = (previous.count if previous else 0) + 1
    return Ejection(now + min(base * count, base * MAX_GROWTH), count), base * (count + MAX_GROWTH)


__all__ = ["MAX_GROWTH", "PROBE_LEASE_S", "EjectionPolicy", "may_eject", "next_ejection", "tripped"]
