"""Keyed state of the correlator: one input partition's facts, in event-time order, per entity key.

What :class:`~pipeline.correlator.Correlator` keeps for each fact partition it owns, and nothing else:
the facts the watermark has not released yet (``pending``), the released ones per key (``history``,
``grants``, ``ids``), what each target holds whatever its age (``holdings``), the facts arrived so far per
key for early pages (``arrived``), and the finding ids already published or paged. The rules are passed
in as ``judge`` callables; the state does no I/O and reads no clock, so the same facts in any arrival
order within the grace give the same findings (``tests/unit/test_scoring_crossrun.py``). It is rebuilt
from the log on assignment, never kept (``Correlator.rebuild``).

Example::

    state = KeyedState(by_target=True)
    state.add(ev)                                            # a fact arrived
    found, late = state.judge_due(watermark_ms, retain_ms, judge)
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from .events import ACCOUNT_REVOKES, TransitionDict, identity_key
from .facts import holding_key
from .scoring.crossrun import (
    MAX_EVIDENCE,
    CrossRunFinding,
    DecisionWindow,
    FactOrder,
    duplicate_id_across_partitions,
    fact_order,
)
from .scoring.rules import granted_access

Judge = Callable[[str, TransitionDict], list[CrossRunFinding]]
"""A rule set bound to a state: ``judge(key, fact)`` -> its findings."""
REJUDGE_LIMIT = 1_000
"""At most this many later facts of its key are judged again for one late fact (``KeyedState.judge_due``)."""

SOURCE_IDLE_SECONDS = 15.0
"""A source partition with no fact this long no longer holds the watermark back (``KeyedState.watermark``); nor,
this long after a state's first live fact, one never heard from. Longer than a scorer group's rebalance
(seconds), so the sources of a rebalancing scorer hold it."""
SOURCE_LAG_CAP_MS = 5 * 60_000
"""The busy watermark trails the latest event time seen by at most this much (plus the grace), however far a
source lags: what waits for it is held in memory, a rebuild judges that much again (``KeyedState.floor``),
and a source that far behind is an outage, whose facts are late."""

Order = FactOrder
"""A fact's place in event-time order (``crossrun.fact_order``: time, rank among the facts of its millisecond,
event id, source partition and offset; a total order)."""
order = fact_order


# Per-key lists hold ``(order, payload)`` entries sorted by order. They are searched with probes compared
# with the entries themselves, not through a ``key=`` function (bisect calls it at every step: a fifth of
# the by-agent judging time). A probe is a 1-tuple, so an entry whose order equals the probe's is decided by
# length and a payload (a dict) is never compared. Orders are unique per fact and offsets are integers,
# which :func:`_past` relies on.


def _at(o: Order) -> tuple[Order]:
    """Probe: ``bisect_left(entries, _at(o))`` is the first entry whose order is ``>= o``."""
    return (o,)


def _past(o: Order) -> tuple[Order]:
    """Probe: ``bisect_left(entries, _past(o))`` is the first entry whose order is ``> o`` (no integer offset
    lies between ``o``'s and the next one)."""
    return ((o[0], o[1], o[2], o[3], o[4] + 1),)


def _since(ms: int) -> tuple[tuple[int]]:
    """Probe: ``bisect_left(entries, _since(ms))`` is the first entry at or after event time ``ms``."""
    return ((ms,),)


def _later(entries: list[Any], ev: TransitionDict, reach_ms: int | None = None) -> tuple[int, int]:
    """The index range of the entries after ``ev`` in order, within ``reach_ms`` of its event time (None: to
    the end)."""
    lo = bisect.bisect_left(entries, _past(order(ev)))
    if reach_ms is None:
        return lo, len(entries)
    return lo, bisect.bisect_left(entries, _since(ev["occurred_at"] + reach_ms + 1), lo=lo)


def _insert(entries: list[Any], entry: tuple[Order, Any]) -> None:
    """Insert in order, after entries of an equal order (facts mostly arrive in order: an append)."""
    if not entries or entries[-1][0] < entry[0]:
        entries.append(entry)
    else:
        entries.insert(bisect.bisect_left(entries, _past(entry[0])), entry)


def _touched(lists: dict[str, list[Any]], key: str) -> list[Any]:
    """``key``'s list (a new one if none), moved to the end of ``lists``: a dict then runs least recently
    touched first, which expiry relies on to stop at the first key still within its window."""
    entries = lists.pop(key, None)
    if entries is None:
        entries = []
    lists[key] = entries
    return entries


class View(Sequence[TransitionDict]):
    """A read-only window ``[start, end)`` of a sorted ``(order, event)`` list, without copying it."""

    __slots__ = ("end", "items", "start")

    def __init__(self, items: list[tuple[Any, TransitionDict]], start: int, end: int) -> None:
        self.items, self.start, self.end = items, start, end

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    @overload
    def __getitem__(self, i: int) -> TransitionDict: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[TransitionDict]: ...
    def __getitem__(self, i: int | slice) -> TransitionDict | Sequence[TransitionDict]:
        if isinstance(i, slice):
            return [self.items[j][1] for j in range(self.start, self.end)][i]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.items[self.start + i][1]

    def __iter__(self) -> Iterator[TransitionDict]:
        items = self.items
        for j in range(self.start, self.end):
            yield items[j][1]


_EMPTY: list[tuple[Any, TransitionDict]] = []


def _quiet(lists: dict[str, list[Any]], oldest_ms: int, limit: int) -> list[str]:
    """The leading keys of an insertion-ordered map of sorted ``(order, ...)`` lists whose newest entry is older
    than ``oldest_ms`` (at most ``limit``): the map runs least recently touched first, so the first key with a
    newer entry ends the search (a key touched last by a late fact waits until the keys before it go)."""
    out: list[str] = []
    for key, entries in lists.items():
        if len(out) >= limit or (entries and entries[-1][0][0] >= oldest_ms):
            break
        out.append(key)
    return out


@dataclass
class KeyedState:
    """Windowed state of one input partition: pending facts, per-key history, and (by target) holdings."""

    by_target: bool
    pending: list[tuple[Order, int, TransitionDict]] = field(default_factory=list)
    """A heap of the facts not judged yet: order, arrival number (so two facts of an equal order, a copy let
    through after ``seen`` was pruned, never compare their dicts), fact."""
    arrivals: int = 0
    history: dict[str, list[tuple[Order, TransitionDict]]] = field(default_factory=dict)
    grants: dict[str, list[tuple[Order, TransitionDict]]] = field(default_factory=dict)
    ids: dict[str, list[TransitionDict]] = field(default_factory=dict)
    holdings: dict[str, dict[str, TransitionDict]] = field(default_factory=dict)
    seen: set[tuple[str, int, int]] = field(default_factory=set)
    emitted: dict[str, None] = field(default_factory=dict)
    arrived: dict[str, list[tuple[Order, TransitionDict]]] = field(default_factory=dict)
    """Per key, every fact arrived so far (judged or pending), event-time order: what early pages read."""
    paged: dict[str, None] = field(default_factory=dict)
    accounts_ended: set[str] = field(default_factory=set)
    """By target: the targets an executed ``disable_account`` or ``delete_account`` of was ever held (``hold``),
    on any system, whatever happened after: what the grant-to-leaver rule needs before it reads anything
    (``may_find_by_target``)."""
    creates: dict[str, list[tuple[Order, tuple[str, str]]]] = field(default_factory=dict)
    """Per key, each ``create_group`` fact's time and the group it made (target and resource id, as identity
    keys: a group matches without case, as AG-ESC-001 compares it, ``escalation.group_key``): group nesting
    (AG-XRN-008) needs one of the fact's groups created before it to find anything, so a fact without one is
    judged without scanning the key's history."""
    acting_for: dict[str, set[str]] = field(default_factory=dict)
    """By agent: per principal, the keys (agents) with an applied fact made on its behalf. A delegation edge
    into the principal read late can complete those agents' grants too (``Correlator._late_edges``)."""
    principals: dict[str, set[str]] = field(default_factory=dict)
    """By agent: per key, the principals it is listed under in ``acting_for`` (so an expired key leaves)."""
    stale_of: Callable[[TransitionDict], bool] | None = None
    """By agent: whether a fact ran under an unapproved policy version (the correlator's policy). With it,
    the applied facts are also indexed for the stale-share rule (:meth:`decision_window`)."""
    stale: dict[str, list[tuple[Order, TransitionDict]]] = field(default_factory=dict)
    """By agent, per key: the applied stale decisions (``stale_of``), event-time order."""
    by_part: dict[str, dict[int, tuple[list[Order], list[Order]]]] = field(default_factory=dict)
    """By agent, per key, per source partition: the applied facts' places, and the stale ones'."""
    sources: dict[int, list[Any]] = field(default_factory=dict)
    """Per source partition: the latest event time of its facts, and when (caller's clock) it was last heard."""
    expected_sources: int = 0
    """How many source partitions there are (the scorers' input topic), when known: until each was heard from
    live (a replayed fact does not count: after a rebuild the sources resume at their own pace), or
    ``SOURCE_IDLE_SECONDS`` after the first live fact, the busy watermark stays at the :meth:`floor` (a
    source not heard from yet would find its facts late)."""
    live_since: float = 0.0
    """The caller's clock at the first live fact (``add`` with a clock)."""
    rejudge_cut: int = 0
    """Late facts whose later facts were judged again only up to ``judge_due``'s limit."""
    released: Order = (0, 0, "", 0, 0)
    max_seen_ms: int = 0
    arrived_at: float = 0.0
    """When a live fact was last added (``add``'s clock, seconds), or the state was rebuilt: what tells a busy
    partition from a quiet one."""

    def key_of(self, ev: TransitionDict) -> str:
        return ev["target"]["identity_id"] if self.by_target else ev["agent"]["agent_id"]

    def add(self, ev: TransitionDict, now: float = 0.0) -> bool:
        """Buffer a fact; False for a redelivered one (same source event, partition and offset). ``now`` is
        the caller's clock (seconds): when the fact's source partition, and the state, last heard a fact
        (``arrived_at``; a replay leaves it 0: a source is not counted as active until a live fact of it
        arrives)."""
        mark = (ev["event_id"], ev["source_partition"], ev["source_offset"])
        if mark in self.seen:
            return False
        self.seen.add(mark)
        if now:
            self.arrived_at = now
            if not self.live_since:
                self.live_since = now
        source = self.sources.get(ev["source_partition"])
        if source is None:
            self.sources[ev["source_partition"]] = [ev["occurred_at"], now]
        else:
            source[0] = max(source[0], ev["occurred_at"])
            source[1] = now
        self.arrivals += 1
        o = order(ev)
        heapq.heappush(self.pending, (o, self.arrivals, ev))
        key = self.key_of(ev)
        _insert(_touched(self.arrived, key), (o, ev))  # ``arrived`` runs least recently added first
        if ev["action"] == "create_group":
            made = (identity_key(ev["target"]["identity_id"]), identity_key(ev["resource"]["resource_id"]))
            _insert(self.creates.setdefault(key, []), (o, made))
        self.max_seen_ms = max(self.max_seen_ms, ev["occurred_at"])
        return True

    def created_before(self, key: str, ev: TransitionDict, window_ms: int) -> bool:
        """Whether a ``create_group`` fact of the key (arrived so far) in ``[ev - window_ms, ev)`` made a
        group ``ev`` may act on: the group it adds a member to, or its target (folded as ``creates`` is: a
        fact's target is an identity key already, its resource id is not)."""
        made = self.creates.get(key)
        if not made:
            return False
        groups = {identity_key(ev["target"]["identity_id"])}
        if ev["action"] == "add_group_member":
            groups.add(identity_key(ev["resource"]["resource_id"]))
        start = bisect.bisect_left(made, _since(ev["occurred_at"] - window_ms))
        end = bisect.bisect_left(made, _at(order(ev)))
        return any(groups.intersection(ids) for _, ids in made[start:end])

    def watermark(self, grace_ms: int, quiet: bool = False, now: float | None = None, wall_ms: int | None = None
                  ) -> int:
        """Event time up to which facts are judged, ``grace_ms`` before:

        - while the partition is busy, the least of the latest event times of the *source* partitions (the
          scorers' input partitions, ``source_partition``) heard from in the last ``SOURCE_IDLE_SECONDS`` of
          ``now`` (all of them when ``now`` is None), but no less than ``SOURCE_LAG_CAP_MS`` before the latest
          seen. A fact partition interleaves the facts of every source partition in the order the scorers
          committed them; a backlog read unevenly (one scorer ahead of another by minutes of event time)
          would otherwise make every fact of the slower sources late. This is Flink's per-input watermark,
          with its idleness: a source with no fact for a while does not hold the others back. While
          ``expected_sources`` were not all heard from yet, for at most ``SOURCE_IDLE_SECONDS`` after the
          first live fact, only what is past the :meth:`floor`;
        - once it is ``quiet`` (no fact for a while; ``now`` is then required), that watermark moved on by the
          time the partition has been quiet (``now - arrived_at``): event time is taken to go on at the wall
          clock's pace from where the facts left it. Not the wall clock at once: a stream whose event time
          runs behind the clock (a backlog, scorers pausing between transactions or for a rebalance) would
          have every fact after a one-second pause late (seen in the correlation benchmark: 32,000 of 89,000
          facts, once the correlator kept up with the scorers);
        - once it has been quiet for ``SOURCE_IDLE_SECONDS``, idle, the wall clock ``wall_ms`` too (Flink's
          idle-source watermark): a partition whose last facts were stamped minutes before they were sent
          (a backdated chain) is judged then, not a grace period later."""
        busy = self._busy(grace_ms, now)
        if not quiet:
            return busy
        if now is None:
            raise ValueError("a quiet watermark needs the caller's clock")
        quiet_for = max(0.0, now - self.arrived_at)
        moved = busy + int(quiet_for * 1000)
        if wall_ms is not None and quiet_for >= SOURCE_IDLE_SECONDS:
            return max(moved, max(self.max_seen_ms, wall_ms) - grace_ms)
        return moved

    def _busy(self, grace_ms: int, now: float | None) -> int:
        if (now is not None and self.live_since and now - self.live_since < SOURCE_IDLE_SECONDS
                and sum(1 for _, at in self.sources.values() if at) < self.expected_sources):
            return self.floor(grace_ms)  # warming up: a source not heard from yet may be behind all heard
        heard = [t for t, at in self.sources.values() if now is None or now - at < SOURCE_IDLE_SECONDS]
        slowest = min(heard) if heard else self.max_seen_ms
        return max(slowest - grace_ms, self.floor(grace_ms))

    def floor(self, grace_ms: int) -> int:
        """The least watermark this state can have given what it has seen: every fact at or before it was
        released by the batch that saw ``max_seen_ms``. A rebuild releases (applies unjudged) only up to it:
        what lies past it may have been pending at the last commit, so it is judged again, and its findings,
        whose ids are deterministic, are stored once."""
        return self.max_seen_ms - SOURCE_LAG_CAP_MS - grace_ms

    def release(self, watermark_ms: int) -> list[TransitionDict]:
        out = []
        while self.pending and self.pending[0][0][0] <= watermark_ms:
            out.append(heapq.heappop(self.pending)[2])
        return out

    def before(self, key: str, ev: TransitionDict, window_ms: int | None = None) -> View:
        """The key's facts before ``ev`` in event-time order (within ``window_ms`` of it, if given)."""
        hist = self.history.get(key, _EMPTY)
        end = bisect.bisect_left(hist, _at(order(ev)))
        start = 0 if window_ms is None else bisect.bisect_left(
            hist, _since(ev["occurred_at"] - window_ms), hi=end)
        return View(hist, start, end)

    def arrived_before(self, key: str, ev: TransitionDict, window_ms: int) -> View:
        """The key's facts arrived so far that precede ``ev`` in event time, within ``window_ms`` of it."""
        hist = self.arrived.get(key, _EMPTY)
        end = bisect.bisect_left(hist, _at(order(ev)))
        start = bisect.bisect_left(hist, _since(ev["occurred_at"] - window_ms), hi=end)
        return View(hist, start, end)

    def judge_early(self, ev: TransitionDict, reach_ms: int, keep_ms: int,
                    judge: Callable[[str, TransitionDict], list[CrossRunFinding]],
                    may: Callable[[TransitionDict], bool] | None = None) -> list[CrossRunFinding]:
        """Early firing: judge a just-added fact against its key's facts arrived so far, then the key's later
        facts within ``reach_ms`` again (their chains may need it: a grant arriving after its revoke). A fact
        ``may`` says False of is not judged (the caller's entry test: ``judge`` would find nothing on it).
        Returns the chains not paged (nor published) before; forgets arrived facts older than ``keep_ms``."""
        key = self.key_of(ev)
        hist = self.arrived.get(key, _EMPTY)
        found = judge(key, ev) if may is None or may(ev) else []
        if hist and hist[-1][1] is not ev:  # else (in order, the usual case) no later fact of the key arrived
            for j in range(*_later(hist, ev, reach_ms)):
                later = hist[j][1]
                if may is None or may(later):
                    found += judge(key, later)
        self.trim_arrived(keep_ms, key)
        out = []
        for f in found:
            if f.finding_id not in self.emitted and f.finding_id not in self.paged:
                if len(self.paged) >= 100_000:
                    self.paged.clear()  # bounded: a page again at worst, for a chain paged long ago
                self.paged[f.finding_id] = None
                out.append(f)
        return out

    def trim_arrived(self, keep_ms: int, key: str | None = None) -> None:
        """Forget arrived facts older than ``keep_ms`` before the latest event time (one key, or all)."""
        cut = self.max_seen_ms - keep_ms
        for k in ([key] if key is not None else list(self.arrived)):
            hist = self.arrived.get(k)
            if hist and hist[0][0][0] < cut:
                del hist[:bisect.bisect_left(hist, _since(cut))]
                if not hist:
                    del self.arrived[k]

    def grants_before(self, key: str, ev: TransitionDict, window_ms: int) -> View:
        """The key's executed grants in ``[ev - window_ms, ev)``: O(log n), however busy the agent."""
        grants = self.grants.get(key, _EMPTY)
        end = bisect.bisect_left(grants, _at(order(ev)))
        start = bisect.bisect_left(grants, _since(ev["occurred_at"] - window_ms), hi=end)
        return View(grants, start, end)

    def same_id(self, ev: TransitionDict) -> list[TransitionDict]:
        return [h for h in self.ids.get(ev["event_id"], ()) if order(h) < order(ev)]

    def judged_since(self, key: str, since_ms: int) -> View:
        """The key's judged facts at or after event time ``since_ms``."""
        hist = self.history.get(key, _EMPTY)
        return View(hist, bisect.bisect_left(hist, _since(since_ms)), len(hist))

    def after(self, key: str, ev: TransitionDict, reach_ms: int | None = None) -> View:
        """The key's judged facts after ``ev`` in event-time order (within ``reach_ms`` of it, if given)."""
        hist = self.history.get(key, _EMPTY)
        return View(hist, *_later(hist, ev, reach_ms))

    def first_time(self, finding_id: str, limit: int = 100_000) -> bool:
        """True once per finding id (re-judging after a late fact must not publish a chain twice)."""
        if finding_id in self.emitted:
            return False
        if len(self.emitted) >= limit:
            self.emitted.clear()  # bounded; the store keeps one row per finding_id regardless
        self.emitted[finding_id] = None
        return True

    def apply(self, key: str, ev: TransitionDict, retain_ms: int) -> None:
        """Record a judged fact; forget the key's facts older than ``retain_ms`` before it. A later copy
        of an event_id held from another partition is not recorded: it raised AG-XRN-006, and must not
        stand in any later chain or holding as a grant of its own (scoring/crossrun.py ``later_copy``)."""
        if self.by_target and duplicate_id_across_partitions(ev, self.same_id(ev)) is not None:
            return
        entry = (order(ev), ev)
        hist = _touched(self.history, key)  # ``history`` runs least recently applied first
        _insert(hist, entry)
        self.ids.setdefault(ev["event_id"], []).append(ev)
        if self.by_target:
            if ev["decision"]["outcome"] == "granted":
                self.hold(ev)
        else:
            if granted_access(ev):
                _insert(self.grants.setdefault(key, []), entry)
            behalf = ev["agent"]["on_behalf_of"]
            if behalf is not None and behalf != key:
                self.acting_for.setdefault(behalf, set()).add(key)
                self.principals.setdefault(key, set()).add(behalf)
            if self.stale_of is not None:
                self._index_decision(key, entry)
        # Relative to the fact applied (the judging point: facts are applied in event-time order), not to the
        # latest event time seen: a backlog's facts are applied after later ones have arrived, and trimmed
        # against those they dropped what the next facts of their own key still had to see (a chain in the
        # last minutes before a gap of more than an hour in event time was missed when caught up on).
        oldest = ev["occurred_at"] - retain_ms
        if hist[0][0][0] < oldest:
            self._forget_before(key, hist, oldest)

    def _forget_before(self, key: str, hist: list[tuple[Order, TransitionDict]], oldest_ms: int) -> None:
        """Drop the key's applied facts (and what indexes them) older than ``oldest_ms`` of event time."""
        lo = _since(oldest_ms)
        cut = bisect.bisect_left(hist, lo)
        for _, old in hist[:cut]:
            same = self.ids.get(old["event_id"])
            if same is not None:
                same[:] = [h for h in same if h is not old]
                if not same:
                    del self.ids[old["event_id"]]
        del hist[:cut]
        grants = self.grants.get(key)
        if grants:
            del grants[:bisect.bisect_left(grants, lo)]
        made = self.creates.get(key)
        if made:
            del made[:bisect.bisect_left(made, lo)]
        stale = self.stale.get(key)
        if stale:
            del stale[:bisect.bisect_left(stale, lo)]
        for lists in self.by_part.get(key, {}).values():
            for places in lists:
                del places[:bisect.bisect_left(places, lo[0])]

    def expire(self, retain_ms: int, keep_ms: int, limit: int = 10_000) -> int:
        """Forget the keys that went quiet: applied facts older than ``retain_ms`` before the latest fact judged,
        and arrived ones older than ``keep_ms`` before the latest event time seen, of keys with no newer fact.
        ``apply`` and ``judge_early`` trim a key only when it has a new fact, so without this every entity ever
        seen would stay in memory (an agent touching a new identity per event grew it without bound); a rebuild
        keeps no more either (it replays ``retain_ms``). Both maps run least recently touched first, so this
        reads only the keys it drops, at most ``limit`` a call, and one more; answers how many it dropped."""
        dropped = 0
        oldest = self.released[0] - retain_ms  # behind the judging point, as ``apply`` trims
        for key in _quiet(self.history, oldest, limit):
            hist = self.history.pop(key)
            self._forget_before(key, hist, oldest)
            for index in (self.grants, self.stale, self.by_part):
                index.pop(key, None)
            for principal in self.principals.pop(key, ()):
                agents = self.acting_for[principal]
                agents.discard(key)
                if not agents:
                    del self.acting_for[principal]
            made = self.creates.get(key)
            if made is not None and not made:
                del self.creates[key]
            dropped += 1
        for key in _quiet(self.arrived, self.max_seen_ms - keep_ms, limit):
            del self.arrived[key]
        return dropped

    def _index_decision(self, key: str, entry: tuple[Order, TransitionDict]) -> None:
        assert self.stale_of is not None
        parts = self.by_part.setdefault(key, {})
        places, stale_places = parts.setdefault(int(entry[1]["source_partition"]), ([], []))
        bisect.insort(places, entry[0])
        if self.stale_of(entry[1]):
            bisect.insort(stale_places, entry[0])
            _insert(self.stale.setdefault(key, []), entry)

    def restale(self, stale_of: Callable[[TransitionDict], bool]) -> None:
        """Index the applied facts again under a new ``stale_of`` (the policy's approved versions changed)."""
        self.stale_of, self.stale, self.by_part = stale_of, {}, {}
        if not self.by_target:
            for key, hist in self.history.items():
                for entry in hist:
                    self._index_decision(key, entry)

    def decision_window(self, key: str, ev: TransitionDict, window_ms: int) -> DecisionWindow:
        """AG-XRN-009's counts over the key's applied facts in ``[ev - window_ms, ev)``, in O(P log n) for P
        source partitions, however busy the agent (the rule would otherwise scan the window for every stale
        decision: quadratic on an agent making thousands of them). Copies of ``ev``'s event_id are not
        counted, as the rule's own scan does not count them."""
        if self.stale_of is None:
            raise ValueError("decision_window needs stale_of")
        o, since = order(ev), ev["occurred_at"] - window_ms
        lo = _since(since)
        hist = self.history.get(key, _EMPTY)
        end = bisect.bisect_left(hist, _at(o))
        decisions = end - bisect.bisect_left(hist, lo, hi=end)
        stale = self.stale.get(key, _EMPTY)
        s_end = bisect.bisect_left(stale, _at(o))
        s_start = bisect.bisect_left(stale, lo, hi=s_end)
        per_part: dict[int, list[int]] = {}
        for part, (places, stale_places) in self.by_part.get(key, {}).items():
            n_end, st_end = bisect.bisect_left(places, o), bisect.bisect_left(stale_places, o)
            per_part[part] = [n_end - bisect.bisect_left(places, lo[0], hi=n_end),
                              st_end - bisect.bisect_left(stale_places, lo[0], hi=st_end)]
        copies = [h for h in self.ids.get(ev["event_id"], ())  # of this key only: a rewritten copy may name
                  if self.key_of(h) == key and h["occurred_at"] >= since and order(h) < o]  # another agent
        for h in copies:  # rare: the same event under another Kafka key or partition
            counts = per_part[int(h["source_partition"])]
            decisions -= 1
            counts[0] -= 1
            if self.stale_of(h):
                counts[1] -= 1
        own = per_part.get(int(ev["source_partition"]), [0, 0])
        take = max(s_start, s_end - MAX_EVIDENCE - len(copies))
        latest = [h for _, h in stale[take:s_end] if not any(h is c for c in copies)][-MAX_EVIDENCE:]
        return DecisionWindow(decisions, sum(c[1] for c in per_part.values()), own[0], own[1],
                              frozenset(p for p, c in per_part.items() if c[1] > 0), latest)

    def hold(self, ev: TransitionDict) -> None:
        fact = {"target_id": ev["target"]["identity_id"], "action": ev["action"], "system": ev["resource"]["system"],
                "entitlement": ev["resource"]["entitlement"], "resource_id": ev["resource"]["resource_id"]}
        if ev["action"] in ACCOUNT_REVOKES:
            self.accounts_ended.add(ev["target"]["identity_id"])
        held = self.holdings.setdefault(ev["target"]["identity_id"], {})
        hk = holding_key(fact)
        old = held.get(hk)
        if old is None or order(old) <= order(ev):
            held[hk] = ev

    def held(self, key: str) -> list[TransitionDict]:
        return sorted(self.holdings.get(key, {}).values(), key=order)

    def judge_due(self, watermark_ms: int, retain_ms: int, judge: Judge, *,
                  rejudge: Callable[[str, TransitionDict], tuple[Judge, int | None] | None] | None = None,
                  limit: int = REJUDGE_LIMIT) -> tuple[list[CrossRunFinding], int]:
        """Judge the facts the watermark releases, oldest first; returns new findings and late facts.

        A fact older than one already judged arrived after the grace: facts after it were judged without
        it, so some are judged again with it and the chain it belongs to is still found. Which ones is
        ``rejudge(key, late)``'s answer: ``None`` for none, else the judge to use and how far after the late
        fact (ms of event time; ``None``: as far as the key's history goes). Without ``rejudge``, every later
        fact of the key, with ``judge``. At most ``limit`` later facts per late fact (``rejudge_cut`` counts
        the late facts cut short): a backlog of late facts on a busy key, or an agent backdating its
        events, must not cost the square of the key's history. A finding id is returned once."""
        out: list[CrossRunFinding] = []
        late = 0
        for ev in self.release(watermark_ms):
            key = self.key_of(ev)
            found = judge(key, ev)
            self.apply(key, ev, retain_ms)
            o = order(ev)
            if o < self.released:
                late += 1
                how = (judge, None) if rejudge is None else rejudge(key, ev)
                if how is not None:
                    found += self._rejudge(key, ev, how[0], how[1], limit)
            else:
                self.released = o
            if found:
                out += [f for f in found if self.first_time(f.finding_id)]
        return out, late

    def _rejudge(self, key: str, late: TransitionDict, judge: Judge, reach_ms: int | None,
                 limit: int) -> list[CrossRunFinding]:
        later = self.after(key, late, reach_ms)
        if len(later) > limit:
            self.rejudge_cut += 1
            later = View(later.items, later.start, later.start + limit)
        found: list[CrossRunFinding] = []
        for ev in later:
            found += judge(key, ev)
        return found

    def prune_seen(self, limit: int = 500_000) -> None:
        if len(self.seen) > limit:  # bounded: a redelivery older than this is caught by finding ids
            self.seen.clear()
