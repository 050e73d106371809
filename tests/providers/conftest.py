"""Fixtures of the provider contract suite: the provider kind under test and a scripted upstream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.providers.upstreams import KEY_ENV, KINDS, Kind, Scripted


@pytest.fixture(params=list(KINDS))
def provider_kind(request: pytest.FixtureRequest) -> Kind:
    """Every provider kind; a case left out for one narrows this with ``upstreams.kinds``."""
    return KINDS[request.param]


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-contract")


@pytest.fixture
def scripted(loop_thread) -> Iterator[Scripted]:
    upstream = Scripted()
    server = loop_thread.run(upstream.start())
    yield upstream
    loop_thread.run(upstream.stop(server))
