"""Admission: rate limits and budget reservations checked and taken in one step, per process or in Redis."""

from __future__ import annotations

from router.ledger.base import Ledger
from router.tenancy.admission.base import Admission
from router.tenancy.admission.memory import LocalAdmission


def open_admission(state: str | None, prefix: str, ledger: Ledger, lease_s: float) -> Admission:
    """In memory without a state URL; in Redis (imported only then) with ``redis://``."""
    if state is None:
        return LocalAdmission(ledger)
    if not state.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"state URL {state!r}: only redis://HOST:PORT/DB (or rediss://, unix://) is supported")
    from router.tenancy.admission.redis import RedisAdmission

    return RedisAdmission(state, prefix, ledger, lease_s)
