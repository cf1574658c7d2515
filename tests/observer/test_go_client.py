"""A grpc-go client (bench/tools/flowfollow, what the `hubble` CLI is built on) against our Observer server.

The client encodes its requests and scans the responses by hand (field numbers from the .proto files),
so these tests also pin the wire format, not only what grpcio makes of it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from meshagent.observer.client import ObserverClient
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.testing import gofollow

from tests.observer import helpers as h
from tests.observer.test_tls import SERVER_NAME
from tests.observer.test_tls import mtls_port as mtls_port  # the mutual-TLS server fixture, shared
from tests.waiting import wait_until

STOP_DPORT = 9999


@pytest.fixture(scope="module")
def flowfollow() -> Path:
    try:
        return gofollow.build()
    except gofollow.GoFollowerUnavailable as e:
        pytest.fail(f"the Go client cannot be built: {e}", pytrace=False)


def getflows(binary: Path, address: str, *args: str) -> gofollow.Result:
    return gofollow.run(binary, "getflows", address, "--timeout", "20", *args)


def test_last_n_flows(flowfollow: Path, served: h.Served) -> None:
    r = getflows(flowfollow, served.target, "--number", "3")
    assert (r.returncode, r.ready) == (0, True), r
    assert set(r.result) == gofollow.FLOWS_KEYS
    # The newest three of the sample mix: TCP to 80, ICMP (no port: -1), SCTP to 3868.
    assert r.result["flows"] == r.result["responses"] == 3
    assert (r.result["first_dport"], r.result["last_dport"]) == (80, 3868)
    assert (r.result["status"], r.result["end"], r.result["lost"]) == ("OK", "eof", 0)
    # Byte for byte what the generated Python client receives for the same request.
    with ObserverClient(served.target) as c:
        expected = sum(m.ByteSize() for m in c.get_flows(opb.GetFlowsRequest(number=3)))
    assert r.result["bytes"] == expected


def test_first_n_and_all(flowfollow: Path, served: h.Served) -> None:
    first = getflows(flowfollow, served.target, "--number", "4", "--first").result
    assert (first["flows"], first["first_dport"], first["last_dport"]) == (4, 80, 5432)
    everything = getflows(flowfollow, served.target).result
    assert (everything["flows"], everything["first_dport"], everything["last_dport"]) == (10, 80, 3868)


def test_lost_events_are_summed(flowfollow: Path, tmp_path: Path, serving_mode: bool) -> None:
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events()[:2])
    pipeline.record_lost(pb.PERF_EVENT_RING_BUFFER, 7)
    pipeline.on_event(h.event(dport=443))
    pipeline.record_lost(pb.OBSERVER_EVENTS_QUEUE, 5)
    with h.serve(pipeline, tmp_path / "o.sock", front_process=serving_mode) as s:
        r = getflows(flowfollow, s.target).result
    assert (r["flows"], r["lost"], r["responses"], r["last_dport"]) == (3, 12, 5, 443)


def test_follow_until_stop_port(flowfollow: Path, tmp_path: Path, serving_mode: bool) -> None:
    # An empty ring and --number equal to what we push: the count is exact whether the server attaches
    # the follower before, during or after the first batch (history then live, without gaps or repeats).
    early, late = 5000, 15000
    pipeline = h.make_pipeline(capacity=65536)
    ports = [1000 + i % 8000 for i in range(early + late - 1)] + [STOP_DPORT]
    events = [h.event(dport=p) for p in ports]
    with (
        h.serve(pipeline, tmp_path / "o.sock", front_process=serving_mode) as s,
        gofollow.Follower(
            flowfollow,
            s.target,
            *("--follow", "--number", str(len(ports)), "--stop-at-dport", str(STOP_DPORT), "--timeout", "60"),
        ) as follower,
    ):
        follower.wait_ready()
        pushed_at = time.monotonic()
        for i in range(0, early, 500):
            pipeline.on_events(events[i : i + 500])
        # The server has sent the first batch and waits for more: the second batch certainly arrives live.
        assert wait_until(lambda: pipeline.ring.waiting >= 1, timeout=30)
        for i in range(early, len(events), 500):
            pipeline.on_events(events[i : i + 500])
        r = follower.result(timeout_s=60)
        elapsed = time.monotonic() - pushed_at
    res = r.result
    assert (r.returncode, res["status"], res["end"]) == (0, "OK", "stop-dport"), r
    assert (res["flows"], res["lost"]) == (len(ports), 0)
    assert (res["first_dport"], res["last_dport"]) == (ports[0], STOP_DPORT)
    print(
        f"go follower: {res['flows']} flows in {elapsed:.2f}s after the first push, "
        f"{res['flows'] / max(res['seconds'], 1e-9):.0f} flows/s while streaming, "
        f"client CPU {1e6 * res['cpu_seconds'] / res['flows']:.2f} us/flow, "
        f"{res['bytes'] / res['flows']:.0f} B/flow"
    )


def test_follow_stopped_by_signal_reports_counts(flowfollow: Path, served: h.Served) -> None:
    follow = ("--follow", "--number", "2", "--timeout", "30", "--progress")
    with gofollow.Follower(flowfollow, served.target, *follow) as f:
        f.wait_ready()
        # `ready` means the request was sent; the history/new split happens when the server takes it.
        assert wait_until(lambda: served.pipeline.ring.waiting >= 1, timeout=10)
        served.pipeline.on_event(h.event(dport=4242))
        f.wait_flows(3)  # the two of history and the new one: now the signal ends a stream that had it
        r = f.stop()
    assert (r.returncode, r.result["status"], r.result["end"]) == (0, "OK", "signal"), r
    assert (r.result["flows"], r.result["first_dport"], r.result["last_dport"]) == (3, -1, 4242)


def test_server_status(flowfollow: Path, tmp_path: Path, serving_mode: bool) -> None:
    pipeline = h.make_pipeline(capacity=8)
    pipeline.on_events(h.sample_events() + [h.event(dport=p) for p in (1, 2)])
    with h.serve(pipeline, tmp_path / "o.sock", front_process=serving_mode) as s:
        r = gofollow.run(flowfollow, "status", s.target, "--timeout", "10")
    assert r.returncode == 0, r
    assert set(r.result) == gofollow.STATUS_KEYS
    # 12 flows seen, the ring of 8 holds the newest 8.
    assert (r.result["num_flows"], r.result["max_flows"], r.result["seen_flows"]) == (8, 8, 12)
    assert pipeline.stats().seen_flows == 12
    assert r.result["version"].startswith("meshagent")


def test_invalid_filter_is_invalid_argument(flowfollow: Path, served: h.Served) -> None:
    r = getflows(flowfollow, served.target, "--bad-filter")
    assert r.returncode == 1
    assert (r.result["status"], r.result["end"], r.result["flows"]) == ("INVALID_ARGUMENT", "error", 0)
    assert "10.0.0.0/99" in r.result["message"]


def test_missing_socket_is_unavailable(flowfollow: Path, tmp_path: Path) -> None:
    r = getflows(flowfollow, f"unix://{tmp_path}/nobody.sock", "--timeout", "5")
    assert (r.returncode, r.result["status"]) == (1, "UNAVAILABLE"), r


def test_mutual_tls(flowfollow: Path, mtls_port: int, pki: dict[str, Path]) -> None:
    addr = f"127.0.0.1:{mtls_port}"
    tls = ["--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["cli_crt"]), "--tls-key", str(pki["cli_key"])]
    r = getflows(flowfollow, addr, *tls, "--server-name", SERVER_NAME, "--number", "5")
    assert (r.returncode, r.result["status"], r.result["flows"]) == (0, "OK", 5), r
    assert r.result["last_dport"] == 3868
    # Without --server-name the certificate's IP address entry (127.0.0.1) is what gets verified.
    st = gofollow.run(flowfollow, "status", addr, *tls, "--timeout", "10")
    assert (st.returncode, st.result["num_flows"]) == (0, 10), st
    # No client certificate: mutual TLS refuses the call.
    refused = getflows(flowfollow, addr, "--tls-ca", str(pki["ca"]), "--server-name", SERVER_NAME)
    assert refused.returncode == 1
    assert refused.result["status"] == "UNAVAILABLE", refused
