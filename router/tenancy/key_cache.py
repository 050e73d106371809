"""The key store's cache of lookups: known keys and unknown ones kept apart, each a bounded LRU.

Every request with a key the cache does not hold costs a database read, so unknown keys are
cached too. A flood of random keys is a stream of unknown ones: it must neither push the
valid keys out (they are in their own table) nor flush every remembered bad key at once (the
oldest unknown one goes first, one at a time, as the flood adds new ones).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

R = TypeVar("R")


class KeyCache(Generic[R]):
    """``key_hash -> (record or None, expiry)``, at most ``max_entries`` of each kind."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._known: OrderedDict[str, tuple[R, float]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()

    def get(self, key_hash: str) -> tuple[R | None, float] | None:
        """``(record, expiry)``, the record None for a key known not to exist; None if not held."""
        hit = self._known.get(key_hash)
        if hit is not None:
            self._known.move_to_end(key_hash)
            return hit
        until = self._unknown.get(key_hash)
        if until is not None:
            self._unknown.move_to_end(key_hash)
            return None, until
        return None

    def put(self, key_hash: str, record: R | None, until: float) -> None:
        """Hold the lookup until ``until``; past the bound, the least recently used of its kind goes."""
        self.pop(key_hash)
        if record is None:
            self._unknown[key_hash] = until
            if len(self._unknown) > self._max:
                self._unknown.popitem(last=False)
        else:
            self._known[key_hash] = (record, until)
            if len(self._known) > self._max:
                self._known.popitem(last=False)

    def pop(self, key_hash: str) -> None:
        self._known.pop(key_hash, None)
        self._unknown.pop(key_hash, None)

    def clear(self) -> None:
        self._known.clear()
        self._unknown.clear()

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)
