"""The types policies work on: a policy's spec, a candidate backend with its stats, a scored pick."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from providers.base import BackendClass, BackendInfo

Capability = Literal["tools", "json_mode", "vision", "embeddings"]
EnergySource = Literal["measured", "declared", "derived", "none"]

# Trust by class, before measurements lower it; a backend may declare its own.
CLASS_TRUST: dict[str, float] = {"sovereign": 1.0, "datacenter": 0.9, "volunteer": 0.5}


class Weights(BaseModel):
    """How much each scorer counts. A weight not written is 0; a scorer weighted 0 is not run.

    Its fields name the scorers, in their fixed order (``SCORER_NAMES``). A new scorer is a field
    here, its cost in ``policies.scorers.SCORERS`` and a column of ``pickers._costs``; the test
    tests/policies/test_scorer_names.py fails until all three (and the README's table) agree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency: float = Field(default=0.0, ge=0)
    price: float = Field(default=0.0, ge=0)
    energy: float = Field(default=0.0, ge=0)
    carbon: float = Field(default=0.0, ge=0)
    load: float = Field(default=0.0, ge=0)
    trust: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _not_all_zero(self) -> Weights:
        if sum(self.as_pairs_all()) <= 0:
            raise ValueError("policy weights must not all be zero")
        return self

    def as_pairs_all(self) -> tuple[float, ...]:
        return tuple(getattr(self, n) for n in SCORER_NAMES)

    def active(self) -> tuple[tuple[str, float], ...]:
        """The (scorer, weight) pairs that count, in a fixed order."""
        return tuple((n, getattr(self, n)) for n in SCORER_NAMES if getattr(self, n) > 0)

    @cached_property
    def mix(self) -> Mix:
        """The weights as the picker uses them, computed once per (frozen) object."""
        active = self.active()
        total = sum(w for _, w in active)
        names = tuple(n for n, _ in active)
        return Mix(names, tuple(w / total for _, w in active), tuple(SCORER_NAMES.index(n) for n in names))


#: The scorers, in the order of the fused cost columns: the fields of Weights, written once there.
SCORER_NAMES: tuple[str, ...] = tuple(Weights.model_fields)


class Mix(NamedTuple):
    """The scorers that count, in a fixed order, each with its share of the score (summing to 1)
    and its position in ``SCORER_NAMES``."""

    names: tuple[str, ...]
    shares: tuple[float, ...]
    columns: tuple[int, ...]


BALANCED = Weights(latency=1.0, price=1.0, energy=0.5, carbon=0.5, load=0.5, trust=0.5)


class MaxPrice(BaseModel):
    """A price ceiling, as OpenRouter's ``max_price``: ``prompt`` and ``completion`` in USD per 1M
    tokens of the backend's price; ``request`` in USD for this request's estimated tokens (the
    prompt estimate plus ``max_tokens``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: float | None = Field(default=None, ge=0)
    completion: float | None = Field(default=None, ge=0)
    request: float | None = Field(default=None, ge=0)


class PolicySpec(BaseModel):
    """A tenant's routing policy: hard constraints first, then weights over the scorers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: Weights = BALANCED
    classes: frozenset[BackendClass] | None = None  # None = every class the tenant may use
    zones: frozenset[str] | None = None  # None = any zone
    max_price: MaxPrice | None = None
    max_carbon_g: float | None = Field(default=None, gt=0)  # gCO2e for this request's estimate
    min_trust: float | None = Field(default=None, ge=0, le=1)
    # model -> models tried in order when it has no backend this tenant may use; over the
    # federation's own (usually written at tenant level, as ``fallback_models``).
    fallback_models: dict[str, tuple[str, ...]] = {}


@dataclass(frozen=True, slots=True)
class Constraints:
    """The hard constraints of one request: the tenant's policy, narrowed by the request's own
    routing fields. Built once per tenant, and once more per request that narrows it."""

    classes: frozenset[str]
    zones: frozenset[str] | None = None
    max_price: MaxPrice | None = None
    max_carbon_g: float | None = None
    min_trust: float | None = None
    only: frozenset[str] | None = None  # backend names
    ignore: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Stats:
    """Live measurements of one backend; None where nothing has been measured yet."""

    ttft_s: float | None = None
    tokens_per_s: float | None = None
    error_rate: float = 0.0
    inflight: int = 0
    ejected: bool = False


class EnergyEstimate(NamedTuple):
    """Joules per prompt token and per generated token, and where the numbers came from."""

    j_in: float | None
    j_out: float | None
    source: EnergySource

    def joules(self, input_tokens: int, output_tokens: int) -> float | None:
        if self.j_in is None or self.j_out is None:
            return None
        return input_tokens * self.j_in + output_tokens * self.j_out


NO_ENERGY = EnergyEstimate(None, None, "none")


@dataclass(frozen=True, slots=True)
class Profile:
    """What is known of one backend serving one model before any request: built once at start."""

    info: BackendInfo
    model: str
    price_input: float | None = None  # USD per 1M tokens of this model on this backend
    price_output: float | None = None
    energy: EnergyEstimate = NO_ENERGY  # the best estimate without measurements
    carbon_intensity: float | None = None  # gCO2e per kWh of the backend's grid zone
    trust: float = 0.9
    context_length: int | None = None
    capabilities: frozenset[str] | None = None  # None = not declared, so not filtered on
    hardware_watts: float | None = None  # declared board power of all its accelerators


class Candidate(NamedTuple):
    """A backend as seen for one request: its profile, its live stats, its energy estimate."""

    profile: Profile
    stats: Stats = Stats()
    energy: EnergyEstimate = NO_ENERGY

    @property
    def info(self) -> BackendInfo:
        return self.profile.info

    @property
    def price_input(self) -> float | None:
        return self.profile.price_input

    @property
    def price_output(self) -> float | None:
        return self.profile.price_output

    @property
    def measured(self) -> bool:
        return self.stats.ttft_s is not None

    @property
    def trust(self) -> float:
        """Declared or class trust, lowered by the measured error rate."""
        return self.profile.trust * (1.0 - self.stats.error_rate)


@dataclass(frozen=True, slots=True)
class RequestShape:
    """What filters and scorers need to know of the request: its token estimate and needs."""

    input_tokens: int
    max_output_tokens: int
    needs: frozenset[str] = frozenset()  # capabilities the request uses


class Table:
    """The costs of the weighted scorers across one plan's candidates, with how each column
    normalises to a score in [0, 1] (1 = best): per scorer ``(costs, hi, span)``, a score being
    ``(hi - cost) / span``; 1.0 for every candidate when the known costs are all equal or none is
    known (``span`` None); 0.0 for an unknown cost, which so scores as the worst known. The
    normalised columns are built on the first read of a candidate's parts, once for the plan."""

    __slots__ = ("_columns", "names", "params")

    def __init__(
        self, names: Sequence[str], params: Sequence[tuple[Sequence[float | None], float, float | None]]
    ) -> None:
        self.names = names
        self.params = params
        self._columns: list[tuple[str, list[float]]] | None = None

    def parts(self, i: int) -> dict[str, float]:
        if self._columns is None:
            self._columns = [(name, _normalised(*p)) for name, p in zip(self.names, self.params, strict=True)]
        return {name: col[i] for name, col in self._columns}


def _normalised(costs: Sequence[float | None], hi: float, span: float | None) -> list[float]:
    if span is None:
        return [1.0] * len(costs)
    return [0.0 if c is None else (hi - c) / span for c in costs]


class Scored:
    """A candidate with its weighted score in [0, 1] and the normalised score of each scorer
    that counted (``parts``, built on first read from the table the picker computed, since
    most requests read the parts of a few candidates only)."""

    __slots__ = ("_index", "_parts", "_table", "candidate", "score")

    def __init__(
        self,
        candidate: Candidate,
        score: float,
        parts: dict[str, float] | None = None,
        table: Table | None = None,
        index: int = 0,
    ) -> None:
        self.candidate = candidate
        self.score = score
        self._parts = parts
        self._table = table
        self._index = index

    @property
    def parts(self) -> dict[str, float]:
        if self._parts is None:
            self._parts = {} if self._table is None else self._table.parts(self._index)
        return self._parts

    def __repr__(self) -> str:
        return f"Scored({self.candidate.profile.info.name!r}, {self.score:.3f}, {self.parts!r})"
