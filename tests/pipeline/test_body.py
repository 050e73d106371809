"""Request bodies at the edge: a key written twice is refused (400 naming it, at any depth), since
the gateway reads the last and forwards the client's bytes, which a backend may read otherwise.
The check runs in memory on a table of bodies, and once end to end over HTTP."""

from __future__ import annotations

import httpx
import pytest

from router.errors import InvalidRequest
from router.pipeline.body import parse_object
from tests.conftest import backend_entry


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"max_tokens":1,"max_tokens":100000}', "max_tokens"),
        (b'{"max_tokens" : 1, "x": "\\":", "max_tokens": 2}', "max_tokens"),  # an escaped quote-colon in text
        (b'{"max_tokens":1,"max\\u005ftokens":2}', "max_tokens"),  # the same key, escaped
        (b'{"a":"\\u003a","a":1}', "a"),  # an escaped colon does not hide a dropped key
        (b'{"m":[{"role":"user","content":"x","role":"system"}]}', "role"),
        (b'{"x":1,"y":{"z":[1,{"k":2,"k":3}]}}', "k"),
    ],
)
def test_duplicate_keys_are_refused_naming_the_key(body, key):
    with pytest.raises(InvalidRequest) as caught:
        parse_object(body)
    assert caught.value.param == key and repr(key) in caught.value.message
    assert caught.value.code == "duplicate_key"


@pytest.mark.parametrize(
    "body",
    [
        b'{"m":[{"x":1},{"x":2}],"a":{"a":1}}',  # the same key in different objects
        b'{"a":"see: http://x:1","b":"\\u003A:","k\\u003a":1}',  # colons in text and escaped
        b'{"a":"\\\\u003a"}',  # an escaped backslash, then text that only looks like an escape
        b'{"tool":{"arguments":"{\\"city\\": \\"Paris\\", \\"city2\\": 1}"}}',
        b"[" * 300 + b"{}" + b"]" * 300,  # nested past orjson's writing limit
    ],
)
def test_bodies_without_duplicates_pass(body):
    if body.startswith(b"["):
        with pytest.raises(InvalidRequest, match="must be a JSON object"):
            parse_object(body)
        body = b'{"a":' + b'{"b":' * 300 + b"1" + b"}" * 300 + b"}"
    assert parse_object(body)


def test_a_duplicate_max_tokens_never_reaches_a_backend(start_sim_backend, start_gateway):
    sim = start_sim_backend("a")
    gw = start_gateway([backend_entry(sim)])
    raw = b'{"model":"m1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"max_tokens":100000}'
    headers = {**gw.auth(), "content-type": "application/json"}
    r = httpx.post(gw.url + "/v1/chat/completions", content=raw, headers=headers, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == ("max_tokens", "duplicate_key", "invalid_request_error")
    assert r.headers["x-should-retry"] == "false"
    assert sim.stats()["requests"] == 0
    ok = raw.replace(b',"max_tokens":100000', b"")
    assert httpx.post(gw.url + "/v1/chat/completions", content=ok, headers=headers, timeout=10).status_code == 200
