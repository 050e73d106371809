"""Adding a scorer touches Weights (its name and weight), policies.scorers (its cost), the fused
pass in pickers._costs (its column) and the README's table: this test fails until they agree,
in name, in order and in value."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from policies import pickers
from policies.base import SCORER_NAMES, RequestShape, Weights
from policies.scorers import SCORERS
from tests.policies.test_policies import cand

README = Path(__file__).resolve().parents[2] / "README.md"


def test_weights_and_scorers_name_the_same_scorers_in_the_same_order():
    assert tuple(Weights.model_fields) == SCORER_NAMES
    assert tuple(SCORERS) == SCORER_NAMES


@pytest.mark.parametrize(
    "c",
    [
        cand("a"),
        cand("b", "sovereign", zone="FR", price=(0.5, 1.5), intensity=50.0, ttft_s=0.2, tokens_per_s=80.0, inflight=3),
        cand("c", "volunteer", price=None, energy=None, error_rate=0.25, max_conc=4, inflight=2),
    ],
)
def test_each_fused_column_is_its_scorer(c):
    req = RequestShape(1200, 300)
    fused = pickers._costs([c], req)[0]
    assert len(fused) == len(SCORER_NAMES)
    for name, value in zip(SCORER_NAMES, fused, strict=True):
        expected = SCORERS[name](c, req)
        if value is None or expected is None:
            assert value is expected, name
        else:
            assert math.isclose(value, expected, rel_tol=1e-12, abs_tol=1e-15), name


def test_the_readme_table_lists_every_scorer():
    table = README.read_text()
    assert [name for name in SCORER_NAMES if f"| {name.ljust(7)} |" not in table] == []
