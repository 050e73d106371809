"""The key store's lookup cache under a flood of random keys: bounded, least recently used first,
and known keys kept apart from unknown ones, so a flood neither evicts valid keys nor flushes
every remembered bad key at once (it was cleared whole at 100k entries)."""

from __future__ import annotations

import secrets

import pytest

from router.tenancy.key_cache import KeyCache
from router.tenancy.keys import KeyStore


def test_each_kind_is_bounded_and_the_least_recently_used_goes_first():
    cache: KeyCache[str] = KeyCache(3)
    for name in ("k1", "k2"):
        cache.put(name, f"record {name}", 100.0)
    for i in range(3):
        cache.put(f"bad{i}", None, 100.0)
    assert cache.get("bad0") == (None, 100.0)  # bad0 is now the most recently used unknown key
    for i in range(3, 1000):
        cache.put(f"bad{i}", None, 100.0)
        if i == 3:
            assert cache.get("bad1") is None and cache.get("bad0") is not None  # one at a time
    assert len(cache) == 2 + 3  # the flood fills only its own table
    assert cache.get("k1") == ("record k1", 100.0) and cache.get("k2") == ("record k2", 100.0)
    assert [cache.get(f"bad{i}") is not None for i in (996, 997, 998, 999)] == [False, True, True, True]


def test_a_key_changes_kind_without_being_held_twice():
    cache: KeyCache[str] = KeyCache(2)
    cache.put("k", None, 1.0)
    cache.put("k", "record", 2.0)
    assert cache.get("k") == ("record", 2.0) and len(cache) == 1
    cache.pop("k")
    assert cache.get("k") is None and len(cache) == 0


@pytest.mark.asyncio
async def test_a_random_key_flood_keeps_a_valid_key_cached(tmp_path):
    """Revoked by another process, a key stays valid here for the cache's lifetime: so a valid
    lookup after the flood shows its entry survived (cleared whole, it would read the revocation)."""
    path = str(tmp_path / "keys.db")
    store, other = KeyStore(path, cache_s=300, cache_max=100), KeyStore(path)
    try:
        secret, record = store.create("acme")
        assert await store.lookup(secret) is not None
        assert other.revoke(record.key_id) is not None  # as another replica would
        for _ in range(1000):
            assert await store.lookup("fr-" + secrets.token_urlsafe(32)) is None
        assert await store.lookup(secret) is not None, "the flood evicted a valid key"
        fresh = KeyStore(path, cache_s=300, cache_max=100)
        assert await fresh.lookup(secret) is None  # the revocation is real, only cached away
        fresh.close()
    finally:
        store.close()
        other.close()
