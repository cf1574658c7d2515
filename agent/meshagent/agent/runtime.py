"""The agent process: source -> reconciler -> datapath, and datapath events -> flows -> gRPC, metrics and
export; health endpoints for probes.

Start order keeps enforcement whole: the datapath loads first and adopts whatever a previous run left in
the kernel (which keeps enforcing meanwhile); the source then syncs, and only its first full sync replaces
the kernel state. Stop leaves the kernel as it is unless cleanup was asked for.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from mmap import PAGESIZE as PAGE_SIZE
from typing import TYPE_CHECKING, Any

from meshagent import __version__
from meshagent.agent.config import SOCKET_LB_DIR, AgentConfig
from meshagent.agent.datapath_metrics import DatapathCollector
from meshagent.agent.encryption import Encryption
from meshagent.agent.encryption_metrics import EncryptionCollector
from meshagent.agent.enricher import ClusterEnricher
from meshagent.agent.health import HealthServer
from meshagent.agent.metrics import ReconcilerCollector
from meshagent.agent.reaper import ConntrackReaper
from meshagent.agent.reconciler import Reconciler
from meshagent.agent.services import ServicesReconciler, translation_forwarder
from meshagent.datapath.datapath import Datapath
from meshagent.datapath.discovery import EndpointInterfaces
from meshagent.datapath.loader import Capacities
from meshagent.observer.convert import FlowBuilder
from meshagent.observer.export import ExportConfig, FlowExporter
from meshagent.observer.metrics import FlowMetrics, MapUsage, MetricsServer
from meshagent.observer.pipeline import FlowPipeline, LossPoller
from meshagent.observer.ring import FlowRing
from meshagent.observer.server import ObserverServer, ServerConfig, TlsConfig
from meshagent.observer.service import ObserverService
from meshagent.policy.compiler import PolicyCompiler
from meshagent.sources.kube_events import ObjectRef
from meshagent.sources.metrics import SourceStatusCollector
from meshagent.sources.source import DesiredState, open_desired_state
from meshagent.wireguard.modes import EncryptionMode
from meshagent.wireguard.peers import PUBLIC_KEY_ANNOTATION

if TYPE_CHECKING:
    from meshagent.datapath.socklb import SocketLB

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentStatus:
    ready: bool
    node: str
    source: dict[str, Any]
    endpoints: dict[str, str]
    # Pinned endpoints not adopted at start, each with its reason (its interface was gone or another's).
    stale_endpoints: list[str]
    rejected: list[str]
    kernel_errors: list[str]
    flows_seen: int
    events_lost: int
    started_seconds_ago: float
    flow_api: dict[str, Any]  # how flows are served: {"mode", and for a front process "pid", "restarts"}
    # Endpoints held isolated (or entry-less) because a map write failed, each with its reason.
    fail_closed: list[str] = field(default_factory=list)
    # Node-to-node encryption: mode, public key, peers with last handshake and counters.
    encryption: dict[str, Any] = field(default_factory=dict)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.started = time.monotonic()
        self.datapath = Datapath(
            pin_dir=config.pin_dir,
            netns=config.node_netns,
            capacities=Capacities(
                event_pages=config.event_buffer_mib * (1 << 20) // PAGE_SIZE,
                event_rate=config.event_rate_per_endpoint,
                event_burst=config.event_burst_per_endpoint,
            ),
        )
        self.compiler = PolicyCompiler()
        self.enricher = ClusterEnricher(
            rule_lookup=self.compiler.rules.lookup, endpoint_address=self._endpoint_address
        )
        self.desired: DesiredState | None = None
        self.reconciler: Reconciler | None = None
        self.pipeline: FlowPipeline | None = None
        self.socket_lb: SocketLB | None = None
        self.services: ServicesReconciler | None = None
        self.encryption: Encryption | None = None
        self._services: list[Any] = []  # things with stop(), stopped in reverse order
        self.metrics: FlowMetrics | None = None
        self.observer_server: ObserverServer | None = None
        self.metrics_port: int | None = None  # the ports actually bound (an address may ask for port 0)
        self.health_port: int | None = None
        self._stopped = threading.Event()

    def _endpoint_address(self, endpoint_id: int) -> IPv4Address | IPv6Address | None:
        """The address of the local pod behind a datapath endpoint id (IPv4 first)."""
        key = self.compiler.pod_of_endpoint(endpoint_id)
        pod = self.compiler.pod(key) if key is not None else None
        return None if pod is None else (pod.ip or pod.ipv6)

    # --- start -----------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        self.datapath.load()
        logger.info("datapath loaded (maps in %s, node netns %s)", cfg.pin_dir, cfg.node_netns or "own")
        if cfg.enable_flows:
            self._start_flows()
        self.desired = open_desired_state(
            manifests=cfg.manifests,
            kubeconfig=cfg.kubeconfig,
            api_host=cfg.api_server,
            node=cfg.node,
            poll_interval=cfg.manifests_poll_seconds,
        )
        if cfg.enable_policy:
            self.reconciler = Reconciler(
                store=self.desired.store,
                compiler=self.compiler,
                datapath=self.datapath,
                node=cfg.node,
                interfaces=EndpointInterfaces(netns=cfg.node_netns),
                enricher=self.enricher,
                on_rejected=self._report_rejected,
                on_attach_failed=self._report_attach_failed,
            )
            self.reconciler.start()  # subscribes before the source starts: sees every initial object
            if self.metrics is not None:
                self.metrics.registry.register(
                    ReconcilerCollector(
                        self.reconciler, stale_at_start=lambda: len(self.datapath.stale_at_start)
                    )
                )
        if self.metrics is not None:
            self.metrics.registry.register(SourceStatusCollector(self.desired.source.status))
        if cfg.enable_socket_lb:
            self._start_socket_lb()
        self._start_encryption()
        self.desired.start()
        reaper = ConntrackReaper(self.datapath, self.pipeline.on_event if self.pipeline else None)
        reaper.start()
        self._services.append(reaper)
        if cfg.health_listen:
            health = HealthServer(cfg.health_listen, ready=self.ready, status=lambda: self.status().__dict__)
            health.start()
            self.health_port = health.port
            self._services.append(health)

    def _start_encryption(self) -> None:
        cfg = self.config
        assert self.desired is not None
        publish = None
        if cfg.manifests is None:  # from the API server; standalone, keys come from the Node manifests
            from meshagent.sources.node_annotation import NodeKeyPublisher

            publish = NodeKeyPublisher(
                node=cfg.node,
                annotation=PUBLIC_KEY_ANNOTATION,
                kubeconfig=cfg.kubeconfig,
                api_host=cfg.api_server,
            ).publish
        self.encryption = Encryption(
            node=cfg.node,
            mode=EncryptionMode(cfg.encryption),
            port=cfg.wireguard_port,
            mtu=cfg.wireguard_mtu,
            state_dir=cfg.state_dir,
            netns=cfg.node_netns,
            store=self.desired.store,
            publish_key=publish,
            maps=self.datapath.encryption_maps,
        )
        self.encryption.start()
        if self.metrics is not None:
            self.metrics.registry.register(EncryptionCollector(self.encryption))

    def _start_socket_lb(self) -> None:
        # Imported here: it compiles in this process with BCC, whose library alone is ~60 MiB resident.
        from meshagent.datapath.socklb import SocketLB

        cfg = self.config
        assert self.desired is not None
        self.socket_lb = SocketLB(
            pin_dir=cfg.pin_dir / SOCKET_LB_DIR, cgroup=cfg.socket_lb_cgroup, accelerate=cfg.enable_sockmap
        )
        self.socket_lb.load()
        self.socket_lb.attach(replace_stale=True)  # in place of a previous agent's, never beside it
        self.services = ServicesReconciler(
            store=self.desired.store,
            socket_lb=self.socket_lb,
            enricher=self.enricher,
            on_rejected=self._report_rejected,
        )
        self.services.start()
        self._services.append(self.services)
        if self.pipeline is not None:
            self.socket_lb.start_events(translation_forwarder(self.pipeline.on_event))
        logger.info(
            "socket load-balancing on cgroup %s%s",
            self.socket_lb.cgroup,
            " with sockmap acceleration" if cfg.enable_sockmap else "",
        )

    def _start_flows(self) -> None:
        cfg = self.config
        ring = FlowRing(cfg.flow_ring_size)
        builder = FlowBuilder(enricher=self.enricher, node_name=cfg.node)
        self.pipeline = FlowPipeline(builder=builder, ring=ring, kernel_lost=self.datapath.lost_events)
        self.datapath.start_events(on_events=self.pipeline.on_events)
        poller = LossPoller(self.pipeline)
        poller.start()
        self._services.append(poller)
        if cfg.metrics_listen:
            metrics = self.metrics = FlowMetrics(
                node_name=cfg.node,
                version=__version__,
                map_usage=self._map_usage,
                source_sync=self._source_sync,
            )
            metrics.registry.register(DatapathCollector(self.datapath))
            self.pipeline.add_batch_sink(metrics.observe_prepared)
            self.pipeline.add_lost_listener(metrics.lost)
            metrics_server = MetricsServer(metrics.registry, cfg.metrics_listen)
            self.metrics_port = metrics_server.port
            self._services.append(metrics_server)
        if cfg.observer_socket or cfg.observer_listen:
            tls = None
            if cfg.observer_tls_cert and cfg.observer_tls_key:
                tls = TlsConfig(cfg.observer_tls_cert, cfg.observer_tls_key, cfg.observer_tls_client_ca)
            server = ObserverServer(
                ObserverService(self.pipeline),
                ServerConfig(
                    unix_socket=cfg.observer_socket,
                    tcp_address=cfg.observer_listen,
                    tls=tls,
                    allow_insecure_tcp=cfg.observer_insecure,
                    limits=cfg.observer_limits,
                    socket_group=cfg.observer_socket_group,
                    front_process=cfg.observer_front_process,
                    front_log_format=cfg.log_format,
                ),
            )
            if server.front is not None and self.metrics is not None:
                server.front.on_restart = self.metrics.front_restarted
                self.metrics.watch_front(server.front.front_state)
            server.start()
            self.observer_server = server
            self._services.append(server)
        if cfg.export_file:
            exporter = FlowExporter(
                ring,
                ExportConfig(
                    path=cfg.export_file, max_bytes=cfg.export_max_bytes, group=cfg.export_file_group
                ),
                node_name=cfg.node,
            )
            exporter.start()
            self._services.append(exporter)

    # --- state -----------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Ready when the datapath is loaded and the first full sync is in the kernel (policy, and the
        socket load-balancer's frontends when it is on)."""
        if self.services is not None and not self.services.applied.is_set():
            return False
        if self.reconciler is None:
            return self.desired is not None and self.desired.source.ready
        return self.reconciler.applied.is_set()

    def status(self) -> AgentStatus:
        source = self.desired.source.status() if self.desired else None
        stats = self.pipeline.stats() if self.pipeline else None
        rec = self.reconciler
        return AgentStatus(
            ready=self.ready(),
            node=self.config.node,
            source={
                "name": source.source,
                "ready": source.ready,
                "connected": source.connected,
                "last_error": source.last_error,
                "errors": list(source.errors),
            }
            if source
            else {},
            endpoints=rec.endpoint_states() if rec else {},
            stale_endpoints=[stale.describe() for stale in self.datapath.stale_at_start],
            rejected=[r.reason for r in rec.rejections.values()]  # each names its kind, namespace and name
            if rec
            else [],
            kernel_errors=list(rec.apply_errors) if rec else [],
            flows_seen=stats.seen_flows if stats else 0,
            events_lost=self.datapath.lost_events(),
            started_seconds_ago=round(time.monotonic() - self.started, 1),
            flow_api=self._flow_api(),
            fail_closed=[
                f"ifindex {ifindex}: {reason}"
                for ifindex, reason in sorted(self.datapath.fail_closed.items())
            ],
            encryption=self.encryption.status() if self.encryption else {},
        )

    def _flow_api(self) -> dict[str, Any]:
        server = self.observer_server
        if server is None:
            return {"mode": "off"}
        if server.front is None:
            return {"mode": "in-process"}
        front = server.front
        return {
            "mode": "front-process",
            "pid": front.pid,
            "state": front.state,  # up | restarting (retried with backoff, for as long as the agent runs)
            "restarts": front.restarts,
            "failed_starts": front.failed_starts,
            "broken_links": front.broken_links,
            "last_error": front.last_error,
        }

    def _map_usage(self) -> list[MapUsage]:
        return [
            MapUsage(name, entries, capacity)
            for name, (entries, capacity) in self.datapath.map_pressure().items()
        ]

    def _source_sync(self) -> dict[str, bool]:
        if self.desired is None:
            return {}
        status = self.desired.source.status()
        return {status.source: status.ready and status.connected}

    def _report_rejected(self, obj: dict[str, Any], reason: str) -> None:
        if self.desired is not None:
            self.desired.source.report_rejected(ObjectRef.from_obj(obj), "InvalidPolicy", reason)

    def _report_attach_failed(self, pod: dict[str, Any], reason: str) -> None:
        if self.desired is not None:
            self.desired.source.report_rejected(ObjectRef.from_obj(pod), "EndpointAttachFailed", reason)

    # --- stop ------------------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def stop(self) -> None:
        """Stops serving; the kernel keeps enforcing the last state unless cleanup_on_exit is set."""
        if self.desired is not None:
            self.desired.stop()
        if self.reconciler is not None:
            self.reconciler.stop()
        if self.encryption is not None:
            self.encryption.stop(remove_device=self.config.cleanup_on_exit)
        for service in reversed(self._services):
            try:
                service.stop()
            except Exception:
                logger.exception("stopping %s failed", type(service).__name__)
        if self.socket_lb is not None:
            if self.config.cleanup_on_exit:
                self.socket_lb.uninstall()
            else:
                self.socket_lb.release()  # hooks stay attached: Services keep translating
        if self.config.cleanup_on_exit:
            self.datapath.uninstall()
            logger.info("removed our tc filters and pinned maps")
        else:
            self.datapath.close()
        self._stopped.set()
