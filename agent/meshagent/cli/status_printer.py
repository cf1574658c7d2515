"""`meshagent status` text: what the flow observer holds, has seen and has lost."""

from __future__ import annotations

import time
from typing import TextIO

from meshagent.observer.proto.observer import observer_pb2 as opb


def _duration(ns: int) -> str:
    s = ns // 1_000_000_000
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] if d else []
    parts += [f"{h}h"] if h or d else []
    parts += [f"{m}m"] if m or h or d else []
    return "".join(parts) + f"{s}s"


def print_status(out: TextIO, status: opb.ServerStatusResponse, nodes: opb.GetNodesResponse) -> None:
    full = 100.0 * status.num_flows / status.max_flows if status.max_flows else 0.0
    rows = [
        ("Nodes", ", ".join(f"{n.name} ({n.version})" for n in nodes.nodes) or "-"),
        ("Flows held", f"{status.num_flows}/{status.max_flows} ({full:.1f}% full)"),
        ("Flows seen", str(status.seen_flows)),
        ("Flow rate", f"{status.flows_rate:.1f} flows/s (last minute)"),
        (
            "Lost events",
            f"datapath {status.lost_events_datapath}, queue {status.lost_events_queue}, "
            f"slow followers {status.lost_events_followers}",
        ),
        ("Ring overwritten", str(status.ring_overwritten)),
        ("Uptime", _duration(status.uptime_ns)),
    ]
    width = max(len(k) for k, _ in rows) + 1
    for k, v in rows:
        out.write(f"{(k + ':').ljust(width)} {v}\n")
    out.flush()


def _ago(epoch_seconds: float, now: float) -> str:
    if not epoch_seconds:
        return "never"
    return _duration(int(max(0.0, now - epoch_seconds) * 1e9)) + " ago"


def print_encryption(out: TextIO, encryption: dict[str, object], now: float) -> None:
    """The WireGuard part of the agent's status: mode, key, one line per peer, nodes left in plaintext."""
    out.write(f"Encryption:       {encryption.get('mode')}")
    if encryption.get("public_key"):
        out.write(f", public key {encryption.get('public_key')}, port {encryption.get('port')}")
    out.write("\n")
    peers = encryption.get("peers") or []
    assert isinstance(peers, list)
    if peers:
        header = ("NODE", "ENDPOINT", "PODS", "HANDSHAKE", "RX BYTES", "TX BYTES")
        out.write("  {:<16} {:<22} {:>5} {:>14} {:>12} {:>12}\n".format(*header))
    for peer in peers:
        out.write(
            f"  {peer['node']:<16} {peer['endpoint'] or '-':<22} {peer['allowed_ips']:>5} "
            f"{_ago(peer['last_handshake'], now):>14} {peer['rx_bytes']:>12} {peer['tx_bytes']:>12}\n"
        )
    for title, field in (
        ("Plaintext nodes", "plaintext_nodes"),
        ("Rejected keys", "rejected"),
        ("Errors", "errors"),
    ):
        items = encryption.get(field) or []
        assert isinstance(items, list)
        if items:
            out.write(f"  {title}: {', '.join(str(item) for item in items)}\n")


def print_agent_status(out: TextIO, status: dict[str, object]) -> None:
    """The agent's own view (its /status health endpoint): readiness, source, endpoints, rejections."""
    source = status.get("source") or {}
    assert isinstance(source, dict)
    state = "connected" if source.get("connected") else f"NOT connected ({source.get('last_error')})"
    out.write(
        f"Agent:            {'ready' if status.get('ready') else 'NOT READY'} on node {status.get('node')}\n"
    )
    out.write(f"Source:           {source.get('name', '-')}, {state}\n")
    api = status.get("flow_api") or {}
    assert isinstance(api, dict)
    if api.get("mode") == "front-process":
        restarts = api.get("restarts", 0)
        again = f", started again {restarts} time{'s' if restarts != 1 else ''}" if restarts else ""
        if api.get("state") == "restarting":
            failed = api.get("failed_starts", 0)
            out.write(
                f"Flow API:         DOWN: front process being restarted ({failed} failed starts so far, "
                f"last: {api.get('last_error') or '-'}){again}\n"
            )
        else:
            out.write(f"Flow API:         front process pid {api.get('pid')}{again}\n")
    elif api:
        out.write(f"Flow API:         {api.get('mode')}\n")
    encryption = status.get("encryption") or {}
    assert isinstance(encryption, dict)
    if encryption:
        print_encryption(out, encryption, time.time())
    endpoints = status.get("endpoints") or {}
    assert isinstance(endpoints, dict)
    out.write(f"Endpoints:        {len(endpoints)}\n")
    for key, where in sorted(endpoints.items()):
        out.write(f"  {key:<40} {where}\n")
    for title, field in (
        ("Rejected objects", "rejected"),
        ("Kernel errors", "kernel_errors"),
        ("Not adopted at start", "stale_endpoints"),
        ("Fail-closed endpoints", "fail_closed"),
    ):
        items = status.get(field) or []
        assert isinstance(items, list)
        if items:
            out.write(f"{title}:\n")
            for item in items:
                out.write(f"  {item}\n")
    out.flush()
