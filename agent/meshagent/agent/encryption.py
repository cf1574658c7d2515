"""Node-to-node encryption in the agent: the key pair, the WireGuard device and its peers kept in step
with the Node and Pod objects, the mode (changeable at run time) and key rotation.

One thread owns the device's netlink sockets: store events only mark the peers stale and wake it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshagent.datapath.encryption_maps import EncryptionMaps
from meshagent.datapath.maps.wireguard import MODE_VALUES, node_id
from meshagent.datapath.wireguard import WIREGUARD_OVERHEAD, WireguardDevice, WireguardError
from meshagent.sources.events import ObjectEvent, SourceEvent
from meshagent.sources.kinds import Kind
from meshagent.sources.store import ObjectStore
from meshagent.wireguard.control import requested_mode, take_rotation_request
from meshagent.wireguard.keys import KeyPair, KeyStore
from meshagent.wireguard.modes import EncryptionMode
from meshagent.wireguard.peers import Address, PeerPlan, node_from_object, plan_peers
from meshagent.wireguard.updates import plan_update

logger = logging.getLogger(__name__)

# How often the worker looks for run-time requests (mode, rotation) when nothing else wakes it.
POLL_SECONDS = 0.25
# How often a public key the API server did not take is offered again.
PUBLISH_RETRY_SECONDS = 5.0
DEFAULT_MTU = 1500


@dataclass
class EncryptionState:
    """What the worker last applied, read by status and metrics."""

    mode: EncryptionMode = EncryptionMode.OFF
    public_key: str = ""
    ifindex: int | None = None
    plan: PeerPlan | None = None
    rotations: int = 0
    last_rotation: float = 0.0


class Encryption:
    def __init__(
        self,
        *,
        node: str,
        mode: EncryptionMode,
        port: int,
        mtu: int,
        state_dir: Path,
        netns: str | None,
        store: ObjectStore,
        publish_key: Callable[[str], None] | None = None,
        maps: EncryptionMaps | None = None,
    ) -> None:
        self.node = node
        self.configured_mode = mode
        self.port = port
        self.mtu = mtu
        self.state_dir = state_dir
        self.keys = KeyStore(state_dir)
        self.device = WireguardDevice(netns=netns)
        self.store = store
        self.publish_key = publish_key
        self.maps = maps  # the datapath's part: mode and device it judges by, remote pod ranges, counters
        self.state = EncryptionState()
        self._pair: KeyPair | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rotate = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._off_checked = False
        self._published: str | None = None  # the public key the Node carries, as far as we know
        # Problems reported in status until they clear, each by its source: the last step, the last
        # publication of the key, the last run-time mode request.
        self._problems: dict[str, str] = {}
        self._publish_tried = 0.0

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribes before the source starts (every Node and Pod event wakes the worker). While the
        mode is off no key is made and no device touched, beyond removing one a previous run left."""
        self._unsubscribe = self.store.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._run, name="encryption", daemon=True)
        self._thread.start()

    def stop(self, *, remove_device: bool = False) -> None:
        """Stops updating; the device and its peers stay (traffic keeps flowing encrypted) unless
        `remove_device` (the agent's cleanup on exit)."""
        self._stop.set()
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if remove_device:
            if self.maps is not None:
                self.maps.set_mode(EncryptionMode.OFF.value, None)
            self.device.delete()

    def request_rotation(self) -> None:
        """Rotate the key pair on the worker thread (safe from a signal handler)."""
        self._rotate.set()
        self._wake.set()

    # --- events -------------------------------------------------------------------------------

    def _on_event(self, event: SourceEvent) -> None:
        if isinstance(event, ObjectEvent) and event.kind in (Kind.NODE, Kind.POD):
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._step()
            except Exception as err:  # the loop must survive one bad round; the next retries
                with self._lock:
                    repeated = self._problems.get("step") == str(err)
                    self._problems["step"] = str(err)
                if not repeated:  # retried four times a second: say it once, not each time
                    logger.error(
                        "encryption update failed: %s", err, exc_info=not isinstance(err, ValueError)
                    )

    def _step(self) -> None:
        mode = self._mode()
        if take_rotation_request(self.state_dir):
            self._rotate.set()
        if self._rotate.is_set():
            self._rotate.clear()
            self._rotate_now()
        if mode is EncryptionMode.OFF:
            self._turn_off()
            return
        if self._pair is None:
            self._pair = self.keys.load_or_create()
            with self._lock:
                self.state.public_key = self._pair.public_key
        if (
            self._published != self._pair.public_key
            and time.monotonic() - self._publish_tried >= PUBLISH_RETRY_SECONDS
        ):
            self._publish()
        if self.state.ifindex is None or self.state.mode is EncryptionMode.OFF:
            self.state.ifindex = self.device.ensure(
                private_key=self._pair.private_key, port=self.port, mtu=self._device_mtu()
            )
        if not self.store.synced:
            # Until the first full read, a missing Node or pod means "not read yet", not "gone".
            self._set_mode(mode)
            return
        plan = plan_peers(
            self.store.objects(Kind.NODE),
            self.store.objects(Kind.POD),
            local_node=self.node,
            local_public_key=self._pair.public_key,
        )
        update = plan_update(self.device.peers(), plan.peers, self.device.routes(), port=self.port)
        if not update.empty:
            self.device.apply(update, port=self.port, source=self._local_address())
            logger.info(
                "WireGuard peers: %d set, %d removed, routes +%d -%d",
                len(update.set_peers),
                len(update.remove_peers),
                len(update.add_routes),
                len(update.remove_routes),
            )
        if plan.rejected != (self.state.plan.rejected if self.state.plan else []):
            for reason in plan.rejected:
                logger.warning("no WireGuard peer for node %s", reason)
        if self.maps is not None:
            # Every remote node's pod ranges, with a key or not: in strict mode a node without one is
            # exactly what the datapath must refuse.
            self.maps.set_remote(plan.remote_pod_cidrs)
        self._check_ipv6_forwarding(plan)
        with self._lock:
            self.state.plan = plan
            self._problems.pop("step", None)
        self._set_mode(mode)

    def _check_ipv6_forwarding(self, plan: PeerPlan) -> None:
        """A node that does not forward IPv6 carries no pod's IPv6 to another node, encrypted or not:
        said in status while remote nodes have IPv6 pod ranges, rather than switched on behind the
        node's back."""
        wants_ipv6 = any(net.version == 6 for nets in plan.remote_pod_cidrs.values() for net in nets)
        problem = None
        if wants_ipv6 and not self.device.ipv6_forwarding():
            problem = (
                "IPv6 forwarding is off on this node (net.ipv6.conf.all.forwarding=0): "
                "pods' IPv6 traffic to other nodes is not forwarded"
            )
        with self._lock:
            before = self._problems.get("ipv6")
            if problem is None:
                self._problems.pop("ipv6", None)
            else:
                self._problems["ipv6"] = problem
        if problem is not None and problem != before:
            logger.warning("%s", problem)

    def _mode(self) -> EncryptionMode:
        try:
            requested = requested_mode(self.state_dir)
        except ValueError as err:
            # A bad request keeps the mode in force: fail closed rather than fall back to the config.
            with self._lock:
                self._problems["mode"] = f"run-time mode request ignored: {err}"
            return self.state.mode if self.state.public_key else self.configured_mode
        with self._lock:
            self._problems.pop("mode", None)
        return requested or self.configured_mode

    def _set_mode(self, mode: EncryptionMode) -> None:
        if mode is not self.state.mode:
            logger.info("encryption mode %s", mode.value)
        if self.maps is not None and self.maps.mode() != (MODE_VALUES[mode.value], self.state.ifindex or 0):
            self.maps.set_mode(mode.value, self.state.ifindex)
        self.state.mode = mode

    def _turn_off(self) -> None:
        if self.state.ifindex is not None or not self._off_checked:
            # Once at start (a previous run may have left its device), then on each switch to off.
            self._off_checked = True
            # The datapath stops judging first: with no device, strict mode would drop everything.
            self.state.ifindex = None
            self._set_mode(EncryptionMode.OFF)
            if self.device.delete():
                logger.info("removed WireGuard device %s: encryption is off", self.device.name)
            with self._lock:
                self.state.plan = None

    def _rotate_now(self) -> None:
        if self._pair is None:
            logger.warning("key rotation asked while encryption is off: nothing to rotate")
            return
        started = time.monotonic()
        pair = self.keys.rotate()
        self._pair = pair
        if self.state.ifindex is not None:
            self.device.set_private_key(pair.private_key)
        with self._lock:
            self.state.public_key = pair.public_key
            self.state.rotations += 1
            self.state.last_rotation = time.time()
        self._publish_tried = 0.0  # publish the new key in this very step
        logger.info("key rotated in %.3f s", time.monotonic() - started)

    def _publish(self) -> None:
        """Offers the public key to the API server; one refused is offered again later (the step
        retries every PUBLISH_RETRY_SECONDS until the Node carries it)."""
        if self.publish_key is None or self._pair is None:
            return
        key = self._pair.public_key
        self._publish_tried = time.monotonic()
        try:
            self.publish_key(key)
        except Exception as err:
            with self._lock:
                self._problems["publish"] = f"cannot publish the public key: {err}"
            logger.error("cannot publish the public key (retried in %.0f s): %s", PUBLISH_RETRY_SECONDS, err)
            return
        self._published = key
        with self._lock:
            self._problems.pop("publish", None)

    def _local_address(self) -> Address | None:
        obj = self.store.get(Kind.NODE, "", self.node)
        return node_from_object(obj).address if obj is not None else None

    def _device_mtu(self) -> int:
        if self.mtu:
            return self.mtu
        local = self._local_address()
        try:
            underlay = self.device.underlay_mtu(local) if local is not None else DEFAULT_MTU
        except (WireguardError, OSError, IndexError):
            underlay = DEFAULT_MTU
        return underlay - WIREGUARD_OVERHEAD

    # --- reading ------------------------------------------------------------------------------

    def node_names(self) -> dict[int, str]:
        """Remote nodes by the id the datapath counts them by."""
        with self._lock:
            plan = self.state.plan
        return {node_id(name): name for name in (plan.remote_pod_cidrs if plan else {})}

    def status(self) -> dict[str, Any]:
        with self._lock:
            plan = self.state.plan
            errors = [self._problems[source] for source in sorted(self._problems)]
            result: dict[str, Any] = {
                "mode": self.state.mode.value,
                "public_key": self.state.public_key,
                "port": self.port,
                "rotations": self.state.rotations,
                "errors": errors,
                "rejected": list(plan.rejected) if plan else [],
                "plaintext_nodes": sorted(plan.plaintext_nodes) if plan else [],
            }
        # The peers as the kernel has them, whatever this run did so far: a restarted agent shows the
        # device it found before its first update.
        peers = []
        try:
            device_peers = self.device.peers()
        except (WireguardError, OSError) as err:
            result["errors"].append(f"cannot read the device: {err}")
            device_peers = {}
        node_of = {key: peer.node for key, peer in (plan.peers.items() if plan else [])}
        for key, peer in sorted(device_peers.items()):
            peers.append(
                {
                    "node": node_of.get(key, "?"),
                    "public_key": key,
                    "endpoint": peer.endpoint,
                    "allowed_ips": len(peer.allowed_ips),
                    "last_handshake": peer.last_handshake,
                    "rx_bytes": peer.rx_bytes,
                    "tx_bytes": peer.tx_bytes,
                }
            )
        result["peers"] = peers
        return result
