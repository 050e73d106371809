"""Which backends a request considers: all of a small group, the best K of a large one.

Why (issue 3: selection runs on every request, so it must be cheap, and sub-linear in the
backends serving a model):

* What never changes while serving is resolved before the first request: a ``Group`` per
  (model, constraints) holds the reachable backends, their stats keys and why every other one is
  out. The scorers are fused (``pickers.weigh``): one pass over the candidates, no per-candidate
  scorer calls, and a candidate object reused while its stats are unchanged.
* A group of at most K backends (``consider``, 16 by default) is admitted and scored whole,
  exactly as the per-scorer reference would (the tests compare the two). K is more than the
  attempts a request may make (``routing.max_attempts`` is at most 10), so it never limits
  fallback.
* A larger group keeps a ``Ranking`` per weighting: all its backends ordered by the full score,
  static parts (price, energy, carbon, trust) and live ones (latency, load, error rate) as they
  were when it was built, for the size of the request that built it. A request walks it,
  checks the live hard constraints of each backend it meets, and scores exactly, with live
  stats and its own size, only the first K admissible ones, plus, on an exploration draw, the
  best unmeasured backend if none of the K is. So normalisation is across the candidates
  considered, not the whole group, and a backend outside them whose live score improved waits
  for the next rebuild. That comes after ``refresh_s`` (1 s), or, for a group so large that a
  rebuild takes more than 1% of that, after 100 rebuild times: at most 1% of a core per ranking.
  A ranking on static score alone (rebuilt only on config or carbon reload) was rejected: a
  latency-only policy (``fastest``) would consider K arbitrary backends.
* A request that names backends is served from those (``only``), adds them to those considered
  (``order``) or passes over them (``ignore``); one that sorts strictly (``provider.sort``) is
  served from the whole group, linear in it, as is the admin dry run.
* Every backend placed in an order has passed every hard constraint, whatever the ranking says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from policies import filters
from policies.base import Candidate, Constraints, EnergyEstimate, Mix, Profile, RequestShape, Stats
from policies.pickers import weigh

CONSIDER = 16  # K: the admissible backends of a large group scored on each request
REFRESH_S = 1.0  # how old a large group's ranking may grow, at least
_CPU_SHARE = 0.01  # ... and at most this share of a core may go to rebuilding one
_MAX_RANKINGS = 64  # per group: weightings in use

View = Callable[[str], Stats]
Estimate = Callable[[Profile, Stats], EnergyEstimate]


class Ranking(NamedTuple):
    mix: Mix
    order: list[int]  # positions in the group, best first
    unmeasured: list[int]  # those never measured when it was built, best first
    built: float  # clock seconds
    ttl: float  # seconds until it is rebuilt


class Group:
    """The backends serving a model that one set of constraints may reach (in config order),
    their stats keys, and why each other backend may not: built once, read on every request."""

    __slots__ = ("_index", "brief", "context", "keys", "last", "profiles", "rankings", "rejected")

    def __init__(self, profiles: Sequence[Profile], keys: Sequence[str], rejected: dict[str, str], limit: int) -> None:
        self.profiles = tuple(profiles)
        self.keys = tuple(keys)
        self.rejected = rejected  # every one, for the dry run
        self.brief = brief(rejected, limit, "filtered out by the tenant's policy")  # for the ledger
        self.context = any(p.context_length is not None for p in profiles)
        self.rankings: dict[int, Ranking] = {}  # by id of the Mix
        # The candidate each backend was last seen as (the stats book keeps a view until an event
        # changes it, so most are unchanged from one request to the next).
        self.last: list[Candidate | None] = [None] * len(self.profiles)
        self._index: dict[str, int] | None = None

    @property
    def index(self) -> dict[str, int]:
        """Backend name -> position; built on first use (requests that name backends)."""
        if self._index is None:
            self._index = {p.info.name: i for i, p in enumerate(self.profiles)}
        return self._index

    def candidate(self, i: int, stats: Stats, energy: EnergyEstimate) -> Candidate:
        """The backend at ``i`` as a candidate, reused while its stats and estimate are unchanged."""
        c = self.last[i]
        if c is None or c.stats is not stats or c.energy is not energy:
            c = self.last[i] = Candidate(self.profiles[i], stats, energy)
        return c

    def ranking(
        self, mix: Mix, req: RequestShape, clock: Callable[[], float], refresh_s: float, view: View, estimate: Estimate
    ) -> Ranking:
        """The group ranked for this weighting, rebuilt (for this request's size) when older than
        ``refresh_s`` or, for a group so large that a rebuild takes longer than 1% of that,
        than 100 rebuilds."""
        found = self.rankings.get(id(mix))
        now = clock()
        if found is None or found.mix is not mix or now - found.built >= found.ttl:
            if found is None and len(self.rankings) >= _MAX_RANKINGS:
                self.rankings.clear()
            order, unmeasured = rank(self, mix, req, view, estimate)
            took = clock() - now
            found = self.rankings[id(mix)] = Ranking(mix, order, unmeasured, now, max(refresh_s, took / _CPU_SHARE))
        return found


def rank(group: Group, mix: Mix, req: RequestShape, view: View, estimate: Estimate) -> tuple[list[int], list[int]]:
    """Every backend of the group, best first by its full score now, hard constraints aside (a
    backend ejected now is ranked too: it will be back); and those of them never measured."""
    cands = [
        group.candidate(i, s, estimate(p, s))
        for i, (p, s) in enumerate(zip(group.profiles, map(view, group.keys), strict=True))
    ]
    sums, _ = weigh(cands, req, mix)
    order = sorted(range(len(sums)), key=sums.__getitem__, reverse=True)
    return order, [i for i in order if cands[i].stats.ttft_s is None]


class Admitted(NamedTuple):
    positions: list[int]
    candidates: list[Candidate]
    busy: dict[str, str]  # backend -> why it may not serve this request now
    examined: int


def admit(
    group: Group,
    positions: Iterable[int],
    cons: Constraints,
    req: RequestShape,
    view: View,
    estimate: Estimate,
    *,
    skip: frozenset[str] = frozenset(),
    want: int | None = None,
) -> Admitted:
    """The backends at ``positions`` (in that order) that may serve this request now, until
    ``want`` of them are found; ``skip`` names backends to pass over (``provider.ignore``)."""
    profiles, keys, last = group.profiles, group.keys, group.last
    # Only these constraints need the full check; the common request has none of them.
    full = (
        group.context
        or bool(req.needs)
        or cons.max_price is not None
        or cons.max_carbon_g is not None
        or cons.min_trust is not None
    )
    fits = filters.fits
    kept: list[int] = []
    cands: list[Candidate] = []
    busy: dict[str, str] = {}
    examined = 0
    for i in positions:
        if want is not None and len(kept) >= want:
            break
        p = profiles[i]
        if skip and p.info.name in skip:
            continue
        examined += 1
        s = view(keys[i])
        limit = p.info.max_concurrency
        if s.ejected:
            busy[p.info.name] = filters.EJECTED
            continue
        if limit is not None and s.inflight >= limit:
            busy[p.info.name] = filters.AT_LIMIT
            continue
        e = estimate(p, s)
        c = last[i]  # Group.candidate, inlined: this loop runs for every candidate of every request
        if c is None or c.stats is not s or c.energy is not e:
            c = last[i] = Candidate(p, s, e)
        if full and (reason := fits(c, cons, req)) is not None:
            busy[p.info.name] = reason
            continue
        kept.append(i)
        cands.append(c)
    return Admitted(kept, cands, busy, examined)


def explore(
    group: Group,
    ranking: Ranking,
    taken: Iterable[int],
    cons: Constraints,
    req: RequestShape,
    view: View,
    estimate: Estimate,
    budget: int,
    skip: frozenset[str] = frozenset(),
) -> Admitted:
    """The best backend still unmeasured and admissible, looking at most ``budget`` far."""
    seen = set(taken)
    todo = (i for i in ranking.unmeasured[:budget] if i not in seen and view(group.keys[i]).ttft_s is None)
    return admit(group, todo, cons, req, view, estimate, skip=skip, want=1)


def brief(reasons: dict[str, str], limit: int, what: str) -> dict[str, str]:
    """``reasons`` for the ledger's record of a decision: all of them if at most ``limit``, else
    the first ``limit`` and a count of the others (a key no backend name can take)."""
    if len(reasons) <= limit:
        return reasons
    out = dict(zip(list(reasons)[:limit], list(reasons.values())[:limit], strict=True))
    out["(not listed)"] = f"{len(reasons) - limit} more {what}"
    return out


def build(profiles: Sequence[Profile], keys: Sequence[str], cons: Constraints, limit: int) -> Group:
    """The group these constraints may ever reach (``only`` and ``ignore`` aside: see ``reach``)."""
    kept: list[Profile] = []
    kept_keys: list[str] = []
    rejected: dict[str, str] = {}
    for p, key in zip(profiles, keys, strict=True):
        reason = filters.reachable(Candidate(p), cons)
        if reason is None:
            kept.append(p)
            kept_keys.append(key)
        else:
            rejected[p.info.name] = reason
    return Group(kept, kept_keys, rejected, limit)


class Reach(NamedTuple):
    """A group as one request's ``only``/``ignore`` narrow it."""

    group: Group
    skip: frozenset[str]  # backends of the group to pass over
    rejected: dict[str, str]  # why the others are out (every one if ``full``, else in brief)
    size: int  # backends left
    adhoc: bool = False  # a group built for this request alone (never ranked: it is small)


def reach(base: Group, cons: Constraints, full: bool, limit: int) -> Reach:
    """``base`` (the group of ``cons`` without ``only``/``ignore``) narrowed by them; linear only
    in the names given, but in the group when ``full`` asks for every reason."""
    rejected = base.rejected if full else base.brief
    if cons.only is None and not cons.ignore:
        return Reach(base, frozenset(), rejected, len(base.profiles))
    index = base.index
    ignored = sorted(index[n] for n in cons.ignore if n in index and (cons.only is None or n in cons.only))
    extra = {base.profiles[i].info.name: "in provider.ignore" for i in ignored}
    if cons.only is None:
        skip = frozenset(extra)
        return Reach(base, skip, {**rejected, **extra} if extra else rejected, len(base.profiles) - len(skip))
    named = sorted(index[n] for n in cons.only if n in index and n not in cons.ignore)
    group = Group([base.profiles[i] for i in named], [base.keys[i] for i in named], {}, limit)
    others = len(base.profiles) - len(named) - len(ignored)
    if full or len(base.profiles) <= limit:
        chosen = set(named) | set(ignored)
        extra |= {p.info.name: "not in provider.only" for i, p in enumerate(base.profiles) if i not in chosen}
    elif others:
        extra["(not in provider.only)"] = f"{others} backends"
    return Reach(group, frozenset(), {**rejected, **extra}, len(named), adhoc=True)
