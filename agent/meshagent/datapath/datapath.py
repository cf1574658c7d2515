"""The policy datapath as one object: load (or adopt) the programs and pinned maps, apply desired kernel
state as a diff, attach to endpoint interfaces, read events, counters and connections.

Write order keeps enforcement whole while state changes: identities and policy entries are written before
the endpoint entries that switch enforcement on, and removed only after; a new endpoint is attached only
once everything it needs is in the maps.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from meshagent.datapath import ct_expiry, tc
from meshagent.datapath.adoption import StaleEndpoint, check_endpoints
from meshagent.datapath.compiled import LoadedObjects, load_in_child
from meshagent.datapath.encryption_maps import EncryptionMaps
from meshagent.datapath.errors import AttachError, MapError
from meshagent.datapath.events import MAP_NAME as EVENTS_MAP_NAME
from meshagent.datapath.events import MAP_NAME6 as EVENTS_MAP_NAME6
from meshagent.datapath.events import EventReader
from meshagent.datapath.layout import layout_id, other_layouts
from meshagent.datapath.loader import (
    DEFAULT_PIN_DIR,
    PROGRAM_FROM_ENDPOINT,
    PROGRAM_TO_ENDPOINT,
    Capacities,
)
from meshagent.datapath.maps import (
    conntrack,
    conntrack6,
    endpoints,
    event_budget,
    events_lost,
    frags,
    frags6,
    ipcache,
    metrics,
    policy,
)
from meshagent.datapath.maps.base import FamilyMaps, PerCpuArray, TypedMap
from meshagent.datapath.migration import LayoutMigration
from meshagent.datapath.pinned import PolicyTrie, map_capacity, read_state
from meshagent.model.events import DatapathEvent, DropReason
from meshagent.model.kernel_state import (
    Action,
    Direction,
    EndpointEntry,
    IPCacheEntry,
    KernelState,
    PolicyEntry,
)

logger = logging.getLogger(__name__)

# Conntrack fill ratio at which the agent warns (the LRU table then starts evicting, the TCP table sends
# new connections to the LRU table).
CT_PRESSURE_WARN = 0.8


@dataclass(frozen=True)
class ConntrackScan:
    """What the last expiry pass cost: entries read and the time it took."""

    entries: int = 0
    seconds: float = 0.0
    expired: int = 0


def _isolated(entry: EndpointEntry) -> EndpointEntry:
    """The entry of an endpoint one of whose denies is not in the policy map: enforcing both ways, and
    flagged so that no new connection passes (its allows, which are in the map, may cover the deny)."""
    return replace(
        entry,
        enforce_ingress=True,
        enforce_egress=True,
        audit_ingress=False,
        audit_egress=False,
        isolated=True,
    )


@dataclass
class ApplyResult:
    """What one apply() changed, and what it could not write (reported, never silently dropped)."""

    written: int = 0
    deleted: int = 0
    attached: int = 0
    detached: int = 0
    errors: list[str] = field(default_factory=list)
    fail_closed_endpoints: list[int] = field(default_factory=list)
    # Endpoints whose programs could not be attached (ifindex -> reason): their map entries are written,
    # and the caller retries (retry_attach) or removes them when their interface is gone.
    attach_failures: dict[int, AttachError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Counter:
    packets: int
    bytes: int


Group = tuple[int, int, int]  # (endpoint id, peer identity, direction): one trie lookup
RuleKey = tuple[int, int, int, int, int, int]  # a PolicyEntry's key: an upsert with the same key replaces it


def _group_of(entry: PolicyEntry) -> Group:
    return (entry.endpoint_id, entry.peer_identity, int(entry.direction))


def _trie_group(key: policy.TrieKey) -> Group:
    return (key.endpoint_id, key.peer_identity, key.direction)


def _rule_key(entry: PolicyEntry) -> RuleKey:
    return (
        entry.endpoint_id,
        int(entry.direction),
        entry.peer_identity,
        int(entry.protocol),
        entry.port_lo,
        entry.port_hi,
    )


class StateDiff(Protocol):
    """A change to the kernel state (meshagent.policy.diff.KernelDiff has this shape): entries to write,
    and entries whose key is gone."""

    @property
    def upsert_endpoints(self) -> frozenset[EndpointEntry]: ...
    @property
    def delete_endpoints(self) -> frozenset[EndpointEntry]: ...
    @property
    def upsert_ipcache(self) -> frozenset[IPCacheEntry]: ...
    @property
    def delete_ipcache(self) -> frozenset[IPCacheEntry]: ...
    @property
    def upsert_policy(self) -> frozenset[PolicyEntry]: ...
    @property
    def delete_policy(self) -> frozenset[PolicyEntry]: ...


class Datapath:
    """Owns the BPF programs and maps of one node. Not thread-safe: one caller applies state."""

    def __init__(
        self,
        *,
        pin_dir: Path = DEFAULT_PIN_DIR,
        netns: str | None = None,
        capacities: Capacities | None = None,
        attach_endpoints: bool = True,
    ) -> None:
        self.pin_dir = pin_dir
        self.maps_dir = pin_dir  # set by load(): the directory of this build's map layout
        # False only for benchmarks that measure map updates for endpoints that have no interface.
        self._attach_endpoints = attach_endpoints
        self._migrating_from: list[Path] = []
        self.netns = netns
        self.capacities = capacities or Capacities()
        self._programs: LoadedObjects | None = None
        self._reader: EventReader | None = None
        self._lock = threading.Lock()
        # What the maps hold, as we last wrote or read it (adopted from the pinned maps at load).
        self._endpoints: dict[int, EndpointEntry] = {}
        self._ipcache: set[IPCacheEntry] = set()
        self._policy: dict[policy.TrieKey, policy.TrieValue] = {}
        # Rules by key and by lookup group (endpoint, peer identity, direction), and the trie keys each
        # group produced, so that a change recompiles only the lookups it touches. None until the first
        # full apply(): adopted maps hold trie entries, not the rules that made them.
        self._rules: dict[RuleKey, PolicyEntry] | None = None
        self._group_rules: dict[Group, dict[RuleKey, PolicyEntry]] = defaultdict(dict)
        self._group_trie: dict[Group, set[policy.TrieKey]] = defaultdict(set)
        self._attached: set[int] = set()
        # Endpoints found stale when the pinned maps were adopted (removed from every map), for status.
        self.stale_at_start: list[StaleEndpoint] = []
        # Endpoints in the maps whose programs are not attached (the last error each): retried by the
        # caller through retry_attach, and removed with the endpoint.
        self.attach_failures: dict[int, AttachError] = {}
        # Connections of removed endpoints, by ifindex, with the time of removal: the conntrack reaper
        # deletes those created before it (a new endpoint may reuse the number at once).
        self._forgotten: dict[int, int] = {}
        # Fail closed. The endpoint entries asked for (self._endpoints is what the kernel holds), the deny
        # trie entries each endpoint id could not get written, and the endpoints (by ifindex) held
        # isolated or entry-less because of a failed write, with the reason: retried on every apply.
        self._wanted: dict[int, EndpointEntry] = {}
        self._unwritten_denies: dict[int, set[policy.TrieKey]] = defaultdict(set)
        # Identities that could not be written to ma_ipcache: while any is missing, a peer may be taken for
        # another (a broader prefix's identity, or the world's), so every endpoint whose verdicts depend
        # on its peers is isolated (see _ipcache_isolates).
        self._unwritten_ipcache: set[IPCacheEntry] = set()
        self.fail_closed: dict[int, str] = {}
        self.last_ct_scan = ConntrackScan()
        self._ct_warned: set[str] = set()

    # --- lifecycle -------------------------------------------------------------------------------

    def load(self) -> None:
        """Compiles and loads the programs; adopts the pinned maps of our layout and re-attaches known
        endpoints in place. When only another layout's maps exist, nothing is attached yet: the old programs
        keep enforcing with their maps until the first apply() has filled ours (see apply)."""
        self.maps_dir = self.pin_dir / layout_id(self.capacities.layout_flags())
        adopting = self.maps_dir.exists()
        self._migrating_from = [] if adopting else other_layouts(self.pin_dir, self.maps_dir.name)
        # Compiled in a process of its own: the compiler's memory leaves with it.
        self._programs = loaded = load_in_child(pin_dir=self.maps_dir, capacities=self.capacities)
        caps = self.capacities

        def typed(name: str, key: type[Any], value: type[Any], capacity: int) -> TypedMap[Any, Any]:
            fd = loaded.map_fd(name)
            return TypedMap(name=name, fd=fd, key_type=key, value_type=value, capacity=capacity)

        self.ipcache_map = FamilyMaps(
            typed(ipcache.MAP_NAME, ipcache.IPCacheKey, ipcache.IPCacheValue, caps.ipcache),
            typed(ipcache.MAP_NAME6, ipcache.IPCache6Key, ipcache.IPCacheValue, caps.ipcache),
        )
        self.endpoints_map = endpoints.EndpointMaps(
            typed(endpoints.MAP_NAME, endpoints.EndpointKey, endpoints.EndpointValue, caps.endpoints),
            typed(endpoints.MAP_NAME6, endpoints.EndpointKey, endpoints.Endpoint6Value, caps.endpoints),
        )
        self.policy_map = typed(policy.MAP_NAME, policy.PolicyKey, policy.PolicyValue, caps.policy)
        self.ct_map = typed(conntrack.MAP_NAME, conntrack.CTKey, conntrack.CTValue, caps.conntrack)
        self.ct_tcp_map = typed(
            conntrack.TCP_MAP_NAME, conntrack.CTKey, conntrack.CTValue, caps.conntrack_tcp
        )
        self.ct6_map = typed(conntrack6.MAP_NAME, conntrack6.CT6Key, conntrack.CTValue, caps.conntrack)
        self.ct6_tcp_map = typed(
            conntrack6.TCP_MAP_NAME, conntrack6.CT6Key, conntrack.CTValue, caps.conntrack_tcp
        )
        self.ct_overflow_map = PerCpuArray(
            name=conntrack.TCP_OVERFLOW_MAP_NAME,
            fd=loaded.map_fd(conntrack.TCP_OVERFLOW_MAP_NAME),
            value_type=events_lost.LostValue,
            capacity=1,
        )
        self.budget_map = typed(
            event_budget.MAP_NAME, event_budget.BudgetKey, event_budget.BudgetValue, caps.endpoints * 16
        )
        self.frags_map = FamilyMaps(
            typed(frags.MAP_NAME, frags.FragKey, frags.FragValue, caps.frags),
            typed(frags6.MAP_NAME, frags6.Frag6Key, frags.FragValue, caps.frags),
        )
        self.metrics_map = PerCpuArray(
            name=metrics.MAP_NAME,
            fd=loaded.map_fd(metrics.MAP_NAME),
            value_type=metrics.MetricsValue,
            capacity=metrics.REASONS * 2,
        )
        self.lost_map = PerCpuArray(
            name=events_lost.MAP_NAME,
            fd=loaded.map_fd(events_lost.MAP_NAME),
            value_type=events_lost.LostValue,
            capacity=1,
        )
        self.encryption_maps = EncryptionMaps(loaded.map_fd)
        self._adopt()

    def _adopt(self) -> None:
        """Takes over what the pinned maps hold, for the endpoints whose interface is still the one we
        attached to (datapath/adoption.py); the others are removed from every map before anything runs."""
        pinned = {key.ifindex: endpoints.decode(key, value) for key, value in self.endpoints_map.items()}
        self._ipcache = {ipcache.decode(key, value) for key, value in self.ipcache_map.items()}
        self._policy = dict(policy.decode(key, value) for key, value in self.policy_map.items())
        for key in self._policy:
            self._group_trie[_trie_group(key)].add(key)
        if self._migrating_from:
            logger.info(
                "maps of another layout found (%s): migrating on the first full apply",
                ", ".join(p.name for p in self._migrating_from),
            )
        check = check_endpoints(pinned, netns=self.netns) if self._attach_endpoints else None
        self._endpoints = dict(pinned) if check is None else dict(check.adopt)
        self._wanted = dict(self._endpoints)
        if check is not None:
            for note in check.notes:
                logger.warning("adopted %s", note)
            self._forget_stale(check.stale)
        for ifindex in list(self._endpoints):
            try:
                self.attach(ifindex)
            except AttachError as err:
                # The previous programs stay attached and keep enforcing with the same maps; the caller
                # retries (retry_attach) and reports.
                self.attach_failures[ifindex] = err
                logger.error("adopted endpoint on ifindex %d not re-attached: %s", ifindex, err)
        if self._endpoints:
            logger.info(
                "adopted %d endpoints, %d ipcache and %d policy entries from %s",
                len(self._endpoints),
                len(self._ipcache),
                len(self._policy),
                self.maps_dir,
            )

    def _forget_stale(self, stale: list[StaleEndpoint]) -> None:
        """Removes stale endpoints from the endpoint, policy and conntrack maps."""
        self.stale_at_start = stale
        if not stale:
            return
        for entry in stale:
            logger.warning("not adopted, removed from the maps: %s", entry.describe())
            self.endpoints_map.delete(endpoints.EndpointKey(entry.ifindex))
        stale_ids = {entry.endpoint_id for entry in stale}
        for key in [k for k in self._policy if k.endpoint_id in stale_ids]:
            self.policy_map.delete(policy.encode(key, self._policy.pop(key))[0])
            self._group_trie[_trie_group(key)].discard(key)
        for group in [g for g, keys in self._group_trie.items() if not keys]:
            del self._group_trie[group]
        stale_ifindexes = {entry.ifindex for entry in stale}
        for table in self.ct_tables():
            for key in [k for k, _ in table.items() if k.ifindex in stale_ifindexes]:
                table.delete(key)

    def program_fds(self) -> dict[str, int]:
        """The loaded programs' descriptors, by name (for the kernel's run-time statistics, say)."""
        return dict(self._require_programs().programs)

    def close(self) -> None:
        """Stops reading events and releases our handles. Programs stay attached and maps stay pinned:
        the kernel keeps enforcing without the agent."""
        self.stop_events()
        self._reader = None
        if self._programs is not None:
            self._programs.close()
            self._programs = None

    def uninstall(self) -> None:
        """Removes exactly what we added: our tc filters on every endpoint (those whose interface still
        exists), and the pinned maps."""
        for ifindex in set(self._endpoints) | self._attached:
            tc.detach(ifindex=ifindex, netns=self.netns)
        self._attached.clear()
        self.close()
        if self.pin_dir.exists():
            shutil.rmtree(self.pin_dir)

    # --- attachment ------------------------------------------------------------------------------

    def attach(self, ifindex: int) -> None:
        programs = self._require_programs()
        tc.attach(
            ifindex=ifindex,
            netns=self.netns,
            from_endpoint=tc.Program(PROGRAM_FROM_ENDPOINT, programs.programs[PROGRAM_FROM_ENDPOINT]),
            to_endpoint=tc.Program(PROGRAM_TO_ENDPOINT, programs.programs[PROGRAM_TO_ENDPOINT]),
        )
        self._attached.add(ifindex)
        self.attach_failures.pop(ifindex, None)

    def detach(self, ifindex: int) -> None:
        self._attached.discard(ifindex)
        self.attach_failures.pop(ifindex, None)
        try:
            tc.detach(ifindex=ifindex, netns=self.netns)
        except AttachError as err:
            # The endpoint is going away either way; a filter we could not remove finds no endpoint
            # entry and is replaced if the interface becomes an endpoint again.
            logger.warning("detach from ifindex %d: %s", ifindex, err)

    def retry_attach(self, ifindexes: set[int] | None = None) -> dict[int, AttachError]:
        """Attaches the programs to endpoints whose attachment failed (all of them, or those given);
        returns the failures that remain."""
        with self._lock:
            for ifindex in sorted(set(self.attach_failures) if ifindexes is None else ifindexes):
                # _wanted, not _endpoints: an endpoint whose entry could not be written is attached too.
                if ifindex not in self._wanted or ifindex in self._attached:
                    continue
                try:
                    self.attach(ifindex)
                except AttachError as err:
                    self.attach_failures[ifindex] = err
            return dict(self.attach_failures)

    def _require_programs(self) -> LoadedObjects:
        if self._programs is None:
            raise RuntimeError("Datapath.load() has not run")
        return self._programs

    # --- desired state ---------------------------------------------------------------------------

    def apply(self, state: KernelState) -> ApplyResult:
        """Brings the maps to `state` (the whole desired state), touching only what differs."""
        with self._lock:
            if not self._migrating_from:
                return self._apply_full(state)
            # Connections first, so that the new programs know them from their first packet; then the
            # state, which attaches the new programs in place; then the old maps go.
            migration = LayoutMigration(self._migrating_from, netns=self.netns)
            migration.carry_connections(
                tcp=self.ct_tcp_map, other=self.ct_map, tcp6=self.ct6_tcp_map, other6=self.ct6_map
            )
            result = self._apply_full(state)
            migration.retire(self._attached)
            self._migrating_from = []
            return result

    def _apply_full(self, state: KernelState) -> ApplyResult:
        rules = {_rule_key(entry): entry for entry in state.policy}
        groups = {_group_of(entry) for entry in state.policy} | set(self._group_trie)
        self._rules = rules
        self._group_rules = defaultdict(dict)
        for key, entry in rules.items():
            self._group_rules[_group_of(entry)][key] = entry
        want_endpoints = {entry.ifindex: entry for entry in state.endpoints}
        self._unwritten_ipcache &= set(state.ipcache)
        return self._commit(
            ipcache_add=set(state.ipcache) - self._ipcache,
            ipcache_remove=self._ipcache - set(state.ipcache),
            trie_groups=groups,
            endpoints_upsert=list(want_endpoints.values()),
            endpoints_remove=[
                i for i in self._endpoints.keys() | self._wanted.keys() if i not in want_endpoints
            ],
        )

    def apply_diff(self, diff: StateDiff) -> ApplyResult:
        """Applies a change (entries to upsert, entries whose key is gone); only the policy lookups it
        touches are recompiled. Needs one apply() first, since adopted maps hold trie entries, not rules."""
        with self._lock:
            if self._rules is None:
                raise RuntimeError("apply_diff needs a full apply() first")
            groups: set[Group] = set()
            for entry in diff.delete_policy:
                key = _rule_key(entry)
                self._rules.pop(key, None)
                self._group_rules[_group_of(entry)].pop(key, None)
                groups.add(_group_of(entry))
            for entry in diff.upsert_policy:
                key = _rule_key(entry)
                self._rules[key] = entry
                self._group_rules[_group_of(entry)][key] = entry
                groups.add(_group_of(entry))
            removed_ifindexes = {e.ifindex for e in diff.delete_endpoints} - {
                e.ifindex for e in diff.upsert_endpoints
            }
            # An upsert may give a known prefix a new identity: the old entry goes from our books.
            upserted_cidrs = {e.cidr for e in diff.upsert_ipcache}
            replaced = {e for e in self._ipcache if e.cidr in upserted_cidrs}
            self._unwritten_ipcache = {
                e
                for e in self._unwritten_ipcache
                if e not in diff.delete_ipcache and e.cidr not in upserted_cidrs
            }
            return self._commit(
                # Identities an earlier apply could not write are tried again.
                ipcache_add=(set(diff.upsert_ipcache) | self._unwritten_ipcache) - self._ipcache,
                ipcache_remove=(set(diff.delete_ipcache) | replaced)
                & self._ipcache - set(diff.upsert_ipcache),
                trie_groups=groups,
                endpoints_upsert=list(diff.upsert_endpoints),
                endpoints_remove=[i for i in removed_ifindexes if i in self._endpoints or i in self._wanted],
            )

    def _commit(
        self,
        *,
        ipcache_add: set[IPCacheEntry],
        ipcache_remove: set[IPCacheEntry],
        trie_groups: set[Group],
        endpoints_upsert: list[EndpointEntry],
        endpoints_remove: list[int],
    ) -> ApplyResult:
        result = ApplyResult()
        # Deny entries an earlier apply could not write are tried again, their lookups recompiled.
        trie_groups = trie_groups | {_trie_group(k) for keys in self._unwritten_denies.values() for k in keys}
        ipcache_was_short = bool(self._unwritten_ipcache)
        failed_ipcache: dict[IPCacheEntry, str] = {}
        for cache_entry in sorted(ipcache_add):
            error = self._write_ipcache(cache_entry, result)
            if error is not None:
                failed_ipcache[cache_entry] = error

        want_trie: dict[policy.TrieKey, policy.TrieValue] = {}
        for group in trie_groups:
            group_rules = self._group_rules.get(group)
            if group_rules:
                want_trie.update(policy.compile_entries(group_rules.values()))
            elif group in self._group_rules:
                del self._group_rules[group]
        stale = [k for group in trie_groups for k in self._group_trie.get(group, ()) if k not in want_trie]

        # Denies first: if the map fills up, what is missing is an allow (a drop), not a deny. A deny that
        # could not be written isolates its endpoint until a later apply writes it (or it is no longer
        # wanted): see _write_endpoint.
        touched_ids = {endpoint_id for endpoint_id, _, _ in trie_groups}
        for endpoint_id in touched_ids & self._unwritten_denies.keys():
            unwritten = self._unwritten_denies[endpoint_id]
            unwritten.difference_update(
                {k for k in unwritten if _trie_group(k) in trie_groups and k not in want_trie}
            )
        changed = [(k, v) for k, v in want_trie.items() if self._policy.get(k) != v]
        changed.sort(key=lambda kv: kv[1].action != Action.DENY)
        # Failed writes are retried once after the removals below (which may make room); only what still
        # fails is reported.
        failed_policy: dict[policy.TrieKey, tuple[policy.TrieValue, str]] = {}
        for key, value in changed:
            error = self._write_policy(key, value, result)
            if error is not None:
                failed_policy[key] = (value, error)

        for entry in endpoints_upsert:
            self._wanted[entry.ifindex] = entry
        # Written again: the endpoints asked for now, those held closed by an earlier failure, and those
        # whose deny rules changed (their isolation may start or end).
        recheck = {entry.ifindex for entry in endpoints_upsert} | set(self.fail_closed)
        recheck |= {i for i, e in self._wanted.items() if e.endpoint_id in touched_ids}
        if ipcache_was_short or self._unwritten_ipcache:
            recheck |= set(self._wanted)  # isolation for missing identities may start or end
        endpoint_errors: dict[int, str] = {}
        for ifindex in sorted(recheck):
            if ifindex in self._wanted:
                self._write_endpoint(self._wanted[ifindex], result, endpoint_errors)
        for entry in endpoints_upsert:
            if self._attach_endpoints and entry.ifindex not in self._attached:
                # Attached even when its entry could not be written: without an entry our programs pass
                # nothing but ARP, where no programs would pass everything.
                try:
                    self.attach(entry.ifindex)
                    result.attached += 1
                except AttachError as err:
                    # One endpoint that cannot be attached never holds up the others.
                    self.attach_failures[entry.ifindex] = err
                    result.attach_failures[entry.ifindex] = err
                    result.errors.append(str(err))

        for ifindex in endpoints_remove:
            if ifindex in self._attached or ifindex in self.attach_failures:
                self.detach(ifindex)
                result.detached += 1
            self.endpoints_map.delete(endpoints.EndpointKey(ifindex))
            self._endpoints.pop(ifindex, None)
            self._wanted.pop(ifindex, None)
            self.fail_closed.pop(ifindex, None)
            self._forgotten[ifindex] = time.monotonic_ns()
            result.deleted += 1

        for key in stale:
            self.policy_map.delete(policy.encode(key, self._policy[key])[0])
            del self._policy[key]
            self._group_trie[_trie_group(key)].discard(key)
            result.deleted += 1
        for group in trie_groups:
            if not self._group_trie.get(group):
                self._group_trie.pop(group, None)

        if stale or endpoints_remove:
            # Removals made room: what failed gets its second try, denies first again.
            for key, (value, _error) in list(failed_policy.items()):
                if self._write_policy(key, value, result) is None:
                    del failed_policy[key]
            for ifindex in sorted(set(self.fail_closed) & self._wanted.keys()):
                self._write_endpoint(self._wanted[ifindex], result, endpoint_errors)
        for endpoint_id in [i for i, keys in self._unwritten_denies.items() if not keys]:
            del self._unwritten_denies[endpoint_id]

        overwritten = {e.cidr for e in ipcache_add if e not in failed_ipcache}
        for cache_entry in ipcache_remove:
            if cache_entry.cidr in overwritten:
                self._ipcache.discard(cache_entry)  # overwritten in place by its new identity
                continue
            self.ipcache_map.delete(ipcache.encode(cache_entry)[0])
            self._ipcache.discard(cache_entry)
            result.deleted += 1
        if failed_ipcache and ipcache_remove:
            # Removals made room: the identities that did not fit get their second try, and the endpoints
            # isolated for them are written again if none is missing now.
            for cache_entry in sorted(failed_ipcache):
                if self._write_ipcache(cache_entry, result) is None:
                    del failed_ipcache[cache_entry]
            if not self._unwritten_ipcache:
                for ifindex in sorted(set(self.fail_closed) & self._wanted.keys()):
                    self._write_endpoint(self._wanted[ifindex], result, endpoint_errors)

        result.errors.extend(failed_ipcache.values())
        result.errors.extend(error for _value, error in failed_policy.values())
        result.errors.extend(endpoint_errors.values())
        result.fail_closed_endpoints = sorted(
            {self._wanted[i].endpoint_id for i in self.fail_closed if i in self._wanted}
        )

        if result.errors:
            logger.error("apply left %d errors: %s", len(result.errors), "; ".join(result.errors[:5]))
        return result

    def _write_ipcache(self, entry: IPCacheEntry, result: ApplyResult) -> str | None:
        """Writes one identity; one that cannot be written is remembered (endpoints that judge their peers
        are isolated until it is). Returns the error, if any."""
        error = self._try_write(self.ipcache_map, *ipcache.encode(entry))
        if error is None:
            result.written += 1
            self._ipcache.add(entry)
            self._unwritten_ipcache.discard(entry)
        else:
            self._unwritten_ipcache.add(entry)
        return error

    def _ipcache_isolates(self, wanted: EndpointEntry) -> bool:
        """Whether a missing identity may change this endpoint's verdicts: when it enforces (an allow for a
        broader prefix, or for the world, may then cover the peer) or has a deny (which may then miss)."""
        if not self._unwritten_ipcache:
            return False
        if wanted.enforce_ingress or wanted.enforce_egress:
            return True
        return any(
            key.endpoint_id == wanted.endpoint_id and value.action == Action.DENY
            for key, value in self._policy.items()
        )

    def _write_policy(self, key: policy.TrieKey, value: policy.TrieValue, result: ApplyResult) -> str | None:
        """Writes one trie entry; a deny that cannot be written is remembered (its endpoint is isolated
        until it is). Returns the error, if any."""
        error = self._try_write(self.policy_map, *policy.encode(key, value))
        if error is None:
            result.written += 1
            self._policy[key] = value
            self._group_trie[_trie_group(key)].add(key)
            self._unwritten_denies[key.endpoint_id].discard(key)
        elif value.action == Action.DENY:
            self._unwritten_denies[key.endpoint_id].add(key)
        return error

    def _write_endpoint(self, wanted: EndpointEntry, result: ApplyResult, errors: dict[int, str]) -> None:
        """Writes an endpoint's entry: as asked, or isolated (deny all by default) while any of its deny
        rules is not in the policy map. When the entry itself cannot be written, the old one is removed:
        our programs pass nothing but ARP on an interface without an entry. Either way the endpoint is
        fail-closed until a later apply succeeds, and reported (errors: ifindex -> the write's error)."""
        ifindex = wanted.ifindex
        reason = None
        entry = wanted
        errors.pop(ifindex, None)
        if self._unwritten_denies.get(wanted.endpoint_id):
            entry = _isolated(wanted)
            reason = f"its deny rules do not fit in {policy.MAP_NAME}: isolated"
        elif self._ipcache_isolates(wanted):
            entry = _isolated(wanted)
            reason = f"identities do not fit in {ipcache.MAP_NAME}, a peer may pass for another: isolated"
        if self._endpoints.get(ifindex) != entry:
            error = self._try_write(self.endpoints_map, *endpoints.encode(entry))
            if error is None:
                result.written += 1
                self._endpoints[ifindex] = entry
            else:
                errors[ifindex] = error
                self.endpoints_map.delete(endpoints.EndpointKey(ifindex))
                self._endpoints.pop(ifindex, None)
                reason = f"its entry could not be written to {endpoints.MAP_NAME}: nothing passes but ARP"
        if reason is None:
            if self.fail_closed.pop(ifindex, None) is not None:
                logger.warning("endpoint %d (ifindex %d) no longer fail-closed", wanted.endpoint_id, ifindex)
            return
        if self.fail_closed.get(ifindex) != reason:
            logger.error("endpoint %d (ifindex %d) fail-closed: %s", wanted.endpoint_id, ifindex, reason)
        self.fail_closed[ifindex] = reason

    @staticmethod
    def _try_write(
        table: TypedMap[Any, Any] | FamilyMaps[Any] | endpoints.EndpointMaps, key: Any, value: Any
    ) -> str | None:
        try:
            table.update(key, value)
        except MapError as err:  # MapFullError included
            return str(err)
        return None

    def state(self) -> tuple[dict[int, EndpointEntry], set[IPCacheEntry], PolicyTrie]:
        """What the kernel maps hold now, read back from the kernel (not from our bookkeeping)."""
        return read_state(self.endpoints_map, self.ipcache_map, self.policy_map)

    # --- observation -----------------------------------------------------------------------------

    def start_events(
        self,
        on_event: Callable[[DatapathEvent], None] | None = None,
        *,
        on_events: Callable[[list[DatapathEvent]], None] | None = None,
        thread: bool = True,
    ) -> EventReader:
        """Delivers decoded events one by one to `on_event`, or a list per drain to `on_events` (from a
        reader thread unless thread=False, in which case the caller drains with EventReader.drain())."""
        if self._reader is None:
            programs = self._require_programs()
            ring_fd, ring6_fd = programs.map_fd(EVENTS_MAP_NAME), programs.map_fd(EVENTS_MAP_NAME6)
            self._reader = EventReader(ring_fd, map_capacity(ring_fd), ring6_fd, map_capacity(ring6_fd))
        self._reader.start(on_event, on_events=on_events, thread=thread)
        return self._reader

    def stop_events(self) -> None:
        if self._reader is not None:
            self._reader.stop()

    def lost_events(self) -> int:
        """Events the kernel did not deliver since the maps were created: those that did not fit in the
        ring buffer, and those suppressed by an endpoint's event budget (so the flow API reports both as
        lost events)."""
        ring = sum(value.count for value in self.lost_map.read(0))
        return ring + sum(self.suppressed_events().values())

    def suppressed_events(self) -> dict[int, int]:
        """Events suppressed by the event budgets, by endpoint interface (ifindex)."""
        out: dict[int, int] = defaultdict(int)
        for key, value in self.budget_map.items():
            if value.suppressed:
                out[key.ifindex] += value.suppressed
        return dict(out)

    def ct_tables(self) -> tuple[TypedMap[Any, Any], ...]:
        """The conntrack maps: TCP and other, IPv4 then IPv6."""
        return (self.ct_tcp_map, self.ct_map, self.ct6_tcp_map, self.ct6_map)

    def ct_tcp_overflow(self) -> int:
        """New TCP connections that went to the LRU table because ma_ct_tcp was full."""
        return sum(value.count for value in self.ct_overflow_map.read(0))

    def counters(self) -> dict[tuple[DropReason, Direction], Counter]:
        """Packets and bytes by (reason, direction), summed over CPUs; reason NONE means forwarded."""
        out = {}
        for reason, direction, index in metrics.known_indexes():
            values = self.metrics_map.read(index)
            out[(reason, direction)] = Counter(sum(v.packets for v in values), sum(v.bytes for v in values))
        return out

    def connections(self) -> list[conntrack.Connection]:
        return [conntrack6.decode_any(k, v) for table in self.ct_tables() for k, v in table.items()]

    def expire_conntrack(
        self, *, timeouts: conntrack.Timeouts | None = None, now_ns: int | None = None
    ) -> list[DatapathEvent]:
        """Removes idle entries and returns a close event for each connection whose end the kernel did
        not report itself (UDP, ICMP, and TCP that went quiet); TCP closed by FIN was reported already.
        The kernel stamps entries with CLOCK_MONOTONIC, which time.monotonic_ns() also reads."""
        forgotten, self._forgotten = self._forgotten, {}
        started = time.perf_counter()
        closed: list[DatapathEvent] = []
        scanned = 0
        for table in self.ct_tables():
            table_closed, table_scanned = ct_expiry.expire(
                table,
                endpoints=self._endpoints,
                forgotten=forgotten,
                timeouts=timeouts or conntrack.Timeouts(),
                now_ns=time.monotonic_ns() if now_ns is None else now_ns,
            )
            closed.extend(table_closed)
            scanned += table_scanned
        self.last_ct_scan = ConntrackScan(
            entries=scanned, seconds=time.perf_counter() - started, expired=len(closed)
        )
        self.map_pressure()  # warns when a table nears its capacity
        return closed

    def flush_conntrack(self) -> None:
        for table in self.ct_tables():
            table.clear()
        self.frags_map.clear()

    def map_pressure(self) -> dict[str, tuple[int, int]]:
        """Entries and capacity per map (the LRU conntrack map evicts instead of filling up; a full TCP
        table sends new connections to it). Logs once when a conntrack table passes CT_PRESSURE_WARN,
        before it bites."""
        pressure = {
            ipcache.MAP_NAME: (len(self._ipcache), self.capacities.ipcache),
            endpoints.MAP_NAME: (len(self._endpoints), self.capacities.endpoints),
            policy.MAP_NAME: (len(self._policy), self.capacities.policy),
            conntrack.MAP_NAME: (len(self.ct_map), self.capacities.conntrack),
            conntrack.TCP_MAP_NAME: (len(self.ct_tcp_map), self.capacities.conntrack_tcp),
        }
        for name in (conntrack.MAP_NAME, conntrack.TCP_MAP_NAME):
            entries, capacity = pressure[name]
            if entries >= CT_PRESSURE_WARN * capacity:
                if name not in self._ct_warned:
                    self._ct_warned.add(name)
                    logger.warning(
                        "%s is %d%% full (%d of %d): %s",
                        name,
                        100 * entries // capacity,
                        entries,
                        capacity,
                        "new TCP connections go to the LRU table"
                        if name == conntrack.TCP_MAP_NAME
                        else "the least recently used connections are being evicted",
                    )
            elif entries < CT_PRESSURE_WARN * capacity * 0.9:
                self._ct_warned.discard(name)
        return pressure
