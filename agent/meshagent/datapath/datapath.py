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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshagent.datapath import tc
from meshagent.datapath.errors import MapError, MapFullError
from meshagent.datapath.events import EventReader
from meshagent.datapath.loader import DEFAULT_PIN_DIR, Capacities, LoadedPrograms, load
from meshagent.datapath.maps import conntrack, endpoints, events_lost, frags, ipcache, metrics, policy
from meshagent.datapath.maps.base import PerCpuArray, TypedMap
from meshagent.model.events import DatapathEvent, DropReason
from meshagent.model.kernel_state import Action, Direction, EndpointEntry, IPCacheEntry, KernelState

logger = logging.getLogger(__name__)


@dataclass
class ApplyResult:
    """What one apply() changed, and what it could not write (reported, never silently dropped)."""

    written: int = 0
    deleted: int = 0
    attached: int = 0
    detached: int = 0
    errors: list[str] = field(default_factory=list)
    fail_closed_endpoints: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Counter:
    packets: int
    bytes: int


class Datapath:
    """Owns the BPF programs and maps of one node. Not thread-safe: one caller applies state."""

    def __init__(
        self,
        *,
        pin_dir: Path = DEFAULT_PIN_DIR,
        netns: str | None = None,
        capacities: Capacities | None = None,
    ) -> None:
        self.pin_dir = pin_dir
        self.netns = netns
        self.capacities = capacities or Capacities()
        self._programs: LoadedPrograms | None = None
        self._reader: EventReader | None = None
        self._lock = threading.Lock()
        # What the maps hold, as we last wrote or read it (adopted from the pinned maps at load).
        self._endpoints: dict[int, EndpointEntry] = {}
        self._ipcache: set[IPCacheEntry] = set()
        self._policy: dict[policy.TrieKey, policy.TrieValue] = {}
        self._attached: set[int] = set()

    # --- lifecycle -------------------------------------------------------------------------------

    def load(self) -> None:
        """Compiles and loads the programs; adopts pinned maps and re-attaches known endpoints in place."""
        self._programs = load(pin_dir=self.pin_dir, capacities=self.capacities)
        bpf = self._programs.bpf
        caps = self.capacities
        self.ipcache_map = TypedMap(
            name=ipcache.MAP_NAME,
            fd=bpf[ipcache.MAP_NAME.encode()].map_fd,
            key_type=ipcache.IPCacheKey,
            value_type=ipcache.IPCacheValue,
            capacity=caps.ipcache,
        )
        self.endpoints_map = TypedMap(
            name=endpoints.MAP_NAME,
            fd=bpf[endpoints.MAP_NAME.encode()].map_fd,
            key_type=endpoints.EndpointKey,
            value_type=endpoints.EndpointValue,
            capacity=caps.endpoints,
        )
        self.policy_map = TypedMap(
            name=policy.MAP_NAME,
            fd=bpf[policy.MAP_NAME.encode()].map_fd,
            key_type=policy.PolicyKey,
            value_type=policy.PolicyValue,
            capacity=caps.policy,
        )
        self.ct_map = TypedMap(
            name=conntrack.MAP_NAME,
            fd=bpf[conntrack.MAP_NAME.encode()].map_fd,
            key_type=conntrack.CTKey,
            value_type=conntrack.CTValue,
            capacity=caps.conntrack,
        )
        self.frags_map = TypedMap(
            name=frags.MAP_NAME,
            fd=bpf[frags.MAP_NAME.encode()].map_fd,
            key_type=frags.FragKey,
            value_type=frags.FragValue,
            capacity=caps.frags,
        )
        self.metrics_map = PerCpuArray(
            name=metrics.MAP_NAME,
            fd=bpf[metrics.MAP_NAME.encode()].map_fd,
            value_type=metrics.MetricsValue,
            capacity=metrics.REASONS * 2,
        )
        self.lost_map = PerCpuArray(
            name=events_lost.MAP_NAME,
            fd=bpf[events_lost.MAP_NAME.encode()].map_fd,
            value_type=events_lost.LostValue,
            capacity=1,
        )
        self._adopt()

    def _adopt(self) -> None:
        self._endpoints = {
            key.ifindex: endpoints.decode(key, value) for key, value in self.endpoints_map.items()
        }
        self._ipcache = {ipcache.decode(key, value) for key, value in self.ipcache_map.items()}
        self._policy = dict(policy.decode(key, value) for key, value in self.policy_map.items())
        for ifindex in list(self._endpoints):
            self.attach(ifindex)
        if self._endpoints:
            logger.info(
                "adopted %d endpoints, %d ipcache and %d policy entries from %s",
                len(self._endpoints),
                len(self._ipcache),
                len(self._policy),
                self.pin_dir,
            )

    @property
    def bpf(self) -> Any:
        if self._programs is None:
            raise RuntimeError("Datapath.load() has not run")
        return self._programs.bpf

    def close(self) -> None:
        """Stops reading events and releases our handles. Programs stay attached and maps stay pinned:
        the kernel keeps enforcing without the agent."""
        self.stop_events()
        self._reader = None
        if self._programs is not None:
            self._programs.bpf.cleanup()
            self._programs = None

    def uninstall(self) -> None:
        """Removes exactly what we added: our tc filters on every endpoint, and the pinned maps."""
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
            from_endpoint=tc.Program(programs.from_endpoint.name, programs.from_endpoint.fd),
            to_endpoint=tc.Program(programs.to_endpoint.name, programs.to_endpoint.fd),
        )
        self._attached.add(ifindex)

    def detach(self, ifindex: int) -> None:
        tc.detach(ifindex=ifindex, netns=self.netns)
        self._attached.discard(ifindex)

    def _require_programs(self) -> LoadedPrograms:
        if self._programs is None:
            raise RuntimeError("Datapath.load() has not run")
        return self._programs

    # --- desired state ---------------------------------------------------------------------------

    def apply(self, state: KernelState) -> ApplyResult:
        """Brings the maps to `state`, touching only what differs."""
        with self._lock:
            result = ApplyResult()
            want_ipcache = set(state.ipcache)
            want_policy = policy.compile_entries(state.policy)
            want_endpoints = {entry.ifindex: entry for entry in state.endpoints}

            for cache_entry in sorted(want_ipcache - self._ipcache):
                if self._write(self.ipcache_map, *ipcache.encode(cache_entry), result):
                    self._ipcache.add(cache_entry)

            failed_denies: set[int] = set()
            # Denies first: if the map fills up, what is missing is an allow (a drop), not a deny.
            changed = [(k, v) for k, v in want_policy.items() if self._policy.get(k) != v]
            changed.sort(key=lambda kv: kv[1].action != Action.DENY)
            for key, value in changed:
                if self._write(self.policy_map, *policy.encode(key, value), result):
                    self._policy[key] = value
                elif value.action == Action.DENY:
                    failed_denies.add(key.endpoint_id)

            for ifindex, entry in want_endpoints.items():
                if entry.endpoint_id in failed_denies:
                    # A deny we could not write must not become an allow: isolate the endpoint instead.
                    entry = replace(entry, enforce_ingress=True, enforce_egress=True)
                    result.fail_closed_endpoints.append(entry.endpoint_id)
                    logger.error(
                        "endpoint %d isolated: its deny rules do not fit in %s",
                        entry.endpoint_id,
                        policy.MAP_NAME,
                    )
                if self._endpoints.get(ifindex) != entry and self._write(
                    self.endpoints_map, *endpoints.encode(entry), result
                ):
                    self._endpoints[ifindex] = entry
                if ifindex not in self._attached:
                    self.attach(ifindex)
                    result.attached += 1

            for ifindex in [i for i in self._endpoints if i not in want_endpoints]:
                if ifindex in self._attached:
                    self.detach(ifindex)
                    result.detached += 1
                self.endpoints_map.delete(endpoints.EndpointKey(ifindex))
                del self._endpoints[ifindex]
                result.deleted += 1

            for key in [k for k in self._policy if k not in want_policy]:
                self.policy_map.delete(policy.encode(key, self._policy[key])[0])
                del self._policy[key]
                result.deleted += 1

            for cache_entry in self._ipcache - want_ipcache:
                self.ipcache_map.delete(ipcache.encode(cache_entry)[0])
                self._ipcache.discard(cache_entry)
                result.deleted += 1

            if result.errors:
                logger.error("apply left %d errors: %s", len(result.errors), "; ".join(result.errors[:5]))
            return result

    def _write(self, table: TypedMap[Any, Any], key: Any, value: Any, result: ApplyResult) -> bool:
        try:
            table.update(key, value)
        except MapFullError as err:
            result.errors.append(str(err))
            return False
        except MapError as err:
            result.errors.append(str(err))
            return False
        result.written += 1
        return True

    def state(
        self,
    ) -> tuple[dict[int, EndpointEntry], set[IPCacheEntry], dict[policy.TrieKey, policy.TrieValue]]:
        """What the kernel maps hold now, read back from the kernel (not from our bookkeeping)."""
        found_endpoints = {k.ifindex: endpoints.decode(k, v) for k, v in self.endpoints_map.items()}
        found_ipcache = {ipcache.decode(k, v) for k, v in self.ipcache_map.items()}
        found_policy = dict(policy.decode(k, v) for k, v in self.policy_map.items())
        return found_endpoints, found_ipcache, found_policy

    # --- observation -----------------------------------------------------------------------------

    def start_events(self, on_event: Callable[[DatapathEvent], None], *, thread: bool = True) -> EventReader:
        """Delivers decoded events to `on_event` (from a reader thread unless thread=False, in which case
        the caller drains with EventReader.drain())."""
        if self._reader is None:
            self._reader = EventReader(self.bpf)
        self._reader.start(on_event, thread=thread)
        return self._reader

    def stop_events(self) -> None:
        if self._reader is not None:
            self._reader.stop()

    def lost_events(self) -> int:
        """Events the kernel could not put in the ring buffer since the maps were created."""
        return sum(value.count for value in self.lost_map.read(0))

    def counters(self) -> dict[tuple[DropReason, Direction], Counter]:
        """Packets and bytes by (reason, direction), summed over CPUs; reason NONE means forwarded."""
        out = {}
        for reason, direction, index in metrics.known_indexes():
            values = self.metrics_map.read(index)
            out[(reason, direction)] = Counter(sum(v.packets for v in values), sum(v.bytes for v in values))
        return out

    def connections(self) -> list[conntrack.Connection]:
        return [conntrack.decode(k, v) for k, v in self.ct_map.items()]

    def flush_conntrack(self) -> None:
        self.ct_map.clear()
        self.frags_map.clear()

    def map_pressure(self) -> dict[str, tuple[int, int]]:
        """Entries and capacity per map (LRU maps evict instead of filling up)."""
        return {
            ipcache.MAP_NAME: (len(self._ipcache), self.capacities.ipcache),
            endpoints.MAP_NAME: (len(self._endpoints), self.capacities.endpoints),
            policy.MAP_NAME: (len(self._policy), self.capacities.policy),
            conntrack.MAP_NAME: (len(self.ct_map), self.capacities.conntrack),
        }

    @property
    def attached_interfaces(self) -> frozenset[int]:
        return frozenset(self._attached)
