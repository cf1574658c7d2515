"""The pure side of Services (no kernel): parsing Kubernetes objects, compiling frontends with weights,
diffs, and the map encoding round trip."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshagent.datapath.maps import lb_services
from meshagent.model.kernel_state import Protocol
from meshagent.model.services import MAX_BACKENDS, Frontend, LBBackend, LBEntry, ServiceInputError
from meshagent.services.catalog import ServiceCatalog
from meshagent.services.diff import diff
from meshagent.services.parse import parse_endpoint_slice, parse_route, parse_service

from tests.socklb.helpers import endpoint_slice, service, tcp_route

HTTP = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
SLICE_HTTP = [{"name": "http", "protocol": "TCP", "port": 8080}]
READY = {"ready": True}


def catalog(*objects: dict[str, Any]) -> ServiceCatalog:
    out = ServiceCatalog()
    for obj in objects:
        assert out.upsert(obj["kind"], obj) is None
    return out


def backends(entry: LBEntry) -> dict[str, int]:
    return {f"{b.address}:{b.port}": b.weight for b in entry.backends}


def test_service_parse() -> None:
    svc = parse_service(service("web", "10.96.0.1", [*HTTP, {"name": "dns", "protocol": "UDP", "port": 53}]))
    assert svc.cluster_ips == (IPv4Address("10.96.0.1"),)
    assert [(p.name, p.protocol, p.port, p.target_port) for p in svc.ports] == [
        ("http", Protocol.TCP, 80, 8080),
        ("dns", Protocol.UDP, 53, 53),
    ]
    assert svc.affinity_timeout == 0
    sticky = parse_service(service("s", "10.96.0.1", HTTP, sessionAffinity="ClientIP"))
    assert sticky.affinity_timeout == 10800  # Kubernetes' default
    headless = parse_service(service("h", "None", HTTP))
    assert headless.cluster_ips == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ports": [{"port": 0}]}, "spec.ports[0].port 0 is not a port number"),
        ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "protocol 'ICMP' is not TCP, UDP or SCTP"),
        ({"clusterIP": "nope", "clusterIPs": ["nope"]}, "'nope' is not an IP address"),
        ({"sessionAffinity": "Cookie"}, "sessionAffinity 'Cookie'"),
        (
            {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
            "timeoutSeconds 0 is not in 1..86400",
        ),
        ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "names are not unique"),
    ],
)
def test_bad_service_is_rejected_with_its_name_and_reason(change: dict[str, Any], message: str) -> None:
    obj = service("web", "10.96.0.1", HTTP)
    obj["spec"].update(change)
    with pytest.raises(ServiceInputError) as info:
        parse_service(obj)
    assert "Service default/web" in str(info.value) and message in str(info.value)


def test_bad_objects_keep_the_last_good_version() -> None:
    good = service("web", "10.96.0.1", HTTP)
    cat = catalog(good, endpoint_slice("web", SLICE_HTTP, [("10.244.0.5", READY)]))
    bad = service("web", "10.96.0.1", [{"port": 99999}])
    error = cat.upsert("Service", bad)
    assert error is not None and "99999" in str(error)
    entries = cat.compile().entries
    assert list(entries) == [Frontend(IPv4Address("10.96.0.1"), 80, Protocol.TCP)]
    assert cat.upsert("Ingress", good) is not None


def test_endpoint_slice_conditions_and_errors() -> None:
    parsed = parse_endpoint_slice(
        endpoint_slice("web", SLICE_HTTP, [("10.244.0.5", {}), ("10.244.0.6", {"terminating": True})])
    )
    assert [(e.ready, e.terminating, e.usable) for e in parsed.endpoints] == [
        (True, False, True),  # a missing `ready` reads as ready
        (True, True, False),
    ]
    unlabeled = endpoint_slice("web", SLICE_HTTP, [])
    unlabeled["metadata"]["labels"] = {}
    with pytest.raises(ServiceInputError, match=r"kubernetes\.io/service-name"):
        parse_endpoint_slice(unlabeled)
    bad = endpoint_slice("web", SLICE_HTTP, [("10.244.0.5", {"ready": True})])
    bad["endpoints"][0]["conditions"]["ready"] = "yes"
    with pytest.raises(ServiceInputError, match=r"conditions\.ready 'yes' is not a boolean"):
        parse_endpoint_slice(bad)


def test_compile_uses_usable_endpoints_on_the_named_port() -> None:
    result = catalog(
        service("web", "10.96.0.1", HTTP),
        endpoint_slice(
            "web",
            SLICE_HTTP,
            [("10.244.0.5", READY), ("10.244.0.6", {"ready": False}), ("10.244.0.7", {"terminating": True})],
        ),
    ).compile()
    (entry,) = result.entries.values()
    assert entry.frontend == Frontend(IPv4Address("10.96.0.1"), 80, Protocol.TCP)
    assert backends(entry) == {"10.244.0.5:8080": 1}


def test_service_without_endpoints_compiles_to_a_refusing_entry() -> None:
    (entry,) = catalog(service("web", "10.96.0.1", HTTP)).compile().entries.values()
    assert entry.backends == () and entry.total_weight == 0


def test_route_weights_are_shared_within_each_backend_service() -> None:
    result = catalog(
        service("shop", "10.96.0.1", HTTP),
        service("v1", "10.96.0.2", HTTP),
        service("v2", "10.96.0.3", HTTP),
        endpoint_slice(
            "v1", SLICE_HTTP, [("10.244.0.1", READY), ("10.244.0.2", READY), ("10.244.0.3", READY)]
        ),
        endpoint_slice("v2", SLICE_HTTP, [("10.244.0.9", READY)]),
        tcp_route("shop", "shop", 80, [("v1", 90), ("v2", 10)]),
    ).compile()
    shop = result.entries[Frontend(IPv4Address("10.96.0.1"), 80, Protocol.TCP)]
    weights = backends(shop)
    v1 = sum(w for k, w in weights.items() if not k.startswith("10.244.0.9"))
    assert v1 * 10 == weights["10.244.0.9:8080"] * 90  # exactly 90:10 between the versions
    assert len({w for k, w in weights.items() if k != "10.244.0.9:8080"}) == 1  # even inside v1
    # The backend Services keep their own frontends, untouched by the route.
    assert backends(result.entries[Frontend(IPv4Address("10.96.0.3"), 80, Protocol.TCP)]) == {
        "10.244.0.9:8080": 1
    }


def test_route_with_a_missing_backend_service_warns_and_uses_the_others() -> None:
    result = catalog(
        service("shop", "10.96.0.1", HTTP),
        service("v1", "10.96.0.2", HTTP),
        endpoint_slice("v1", SLICE_HTTP, [("10.244.0.1", READY)]),
        tcp_route("shop", "shop", 80, [("v1", 50), ("gone", 50)]),
    ).compile()
    assert backends(result.entries[Frontend(IPv4Address("10.96.0.1"), 80, Protocol.TCP)]) == {
        "10.244.0.1:8080": 50
    }
    assert any("gone" in w for w in result.warnings)


def test_route_parse_errors() -> None:
    route = tcp_route("r", "shop", 80, [("v1", -1)])
    with pytest.raises(ServiceInputError, match=r"TCPRoute default/r: .*weight -1"):
        parse_route(route)
    route = tcp_route("r", "shop", 80, [("v1", 1)])
    route["kind"] = "HTTPRoute"
    with pytest.raises(ServiceInputError, match="not TCPRoute or UDPRoute"):
        parse_route(route)


def test_too_many_endpoints_are_capped_with_a_warning() -> None:
    many = [(f"10.244.1.{i}", READY) for i in range(1, MAX_BACKENDS + 11)]
    result = catalog(service("web", "10.96.0.1", HTTP), endpoint_slice("web", SLICE_HTTP, many)).compile()
    (entry,) = result.entries.values()
    assert len(entry.backends) == MAX_BACKENDS
    assert result.warnings


def test_diff_is_per_frontend() -> None:
    a = LBEntry(
        Frontend(IPv4Address("10.96.0.1"), 80, Protocol.TCP), (LBBackend(IPv4Address("10.0.0.1"), 80, 1),)
    )
    b = LBEntry(Frontend(IPv4Address("10.96.0.2"), 80, Protocol.TCP))
    b2 = LBEntry(b.frontend, (), affinity_timeout=5)
    result = diff({a.frontend: a, b.frontend: b}, {b.frontend: b2})
    assert result.upserts == (b2,) and result.removals == (a.frontend,)
    assert diff({a.frontend: a}, {a.frontend: a}).empty


_backend = st.builds(
    LBBackend,
    st.integers(0, 2**32 - 1).map(IPv4Address),
    st.integers(1, 65535),
    st.integers(0, 1 << 20),
)


@given(
    address=st.integers(0, 2**32 - 1).map(IPv4Address),
    port=st.integers(1, 65535),
    protocol=st.sampled_from([Protocol.TCP, Protocol.UDP]),
    members=st.lists(_backend, max_size=MAX_BACKENDS),
    affinity=st.integers(0, 86400),
)
def test_map_encoding_round_trips(
    address: IPv4Address, port: int, protocol: Protocol, members: list[LBBackend], affinity: int
) -> None:
    entry = LBEntry(Frontend(address, port, protocol), tuple(members), affinity_timeout=affinity)
    key, value = lb_services.encode(entry)
    assert value.total_weight == entry.total_weight
    assert lb_services.decode(key, value) == entry


def test_backend_index_maps_a_backend_back_to_its_services() -> None:
    from meshagent.services.lookup import backend_index

    result = catalog(
        service("shop", "10.96.0.1", HTTP),
        service("v1", "10.96.0.2", HTTP),
        endpoint_slice("v1", SLICE_HTTP, [("10.244.0.1", READY)]),
        tcp_route("shop", "shop", 80, [("v1", 1)]),
    ).compile()
    index = backend_index(result.entries)
    vias = index[(IPv4Address("10.244.0.1"), 8080, Protocol.TCP)]
    assert [(v.frontend.address, v.service.name if v.service else None) for v in vias] == [
        (IPv4Address("10.96.0.1"), "shop"),
        (IPv4Address("10.96.0.2"), "v1"),
    ]
    assert (IPv4Address("10.244.0.1"), 8080, Protocol.UDP) not in index


def test_translation_event_decoding() -> None:
    import ctypes
    import socket
    import struct

    from meshagent.datapath.maps import lb_events

    record = lb_events.EventRecord(
        ts_ns=5,
        cookie=7,
        netns_cookie=9,
        service_addr_net=struct.unpack("=I", socket.inet_aton("10.96.0.1"))[0],
        backend_addr_net=struct.unpack("=I", socket.inet_aton("10.244.0.1"))[0],
        service_port_net=socket.htons(80),
        backend_port_net=socket.htons(8080),
        protocol=17,
        type=lb_events.TRANSLATED,
    )
    event = lb_events.decode(bytes(record))
    assert (event.timestamp_ns, event.socket_cookie, event.netns_cookie) == (5, 7, 9)
    assert event.frontend == Frontend(IPv4Address("10.96.0.1"), 80, Protocol.UDP)
    assert event.backend == (IPv4Address("10.244.0.1"), 8080)
    record.type = lb_events.REFUSED
    assert lb_events.decode(bytes(record)).backend is None
    assert ctypes.sizeof(record) == 40


def test_large_weights_are_scaled_to_fit_and_keep_their_ratio() -> None:
    sizes = {"a": 7, "b": 11, "c": 13}
    objects: list[dict[str, Any]] = [service("shop", "10.96.0.1", HTTP)]
    for index, (name, size) in enumerate(sizes.items()):
        objects.append(service(name, f"10.96.1.{index + 1}", HTTP))
        objects.append(
            endpoint_slice(name, SLICE_HTTP, [(f"10.244.{index}.{i + 1}", READY) for i in range(size)])
        )
    objects.append(tcp_route("shop", "shop", 80, [("a", 1_000_000), ("b", 999_999), ("c", 1)]))
    entry = catalog(*objects).compile().entries[Frontend(IPv4Address("10.96.0.1"), 80, Protocol.TCP)]
    assert entry.total_weight <= 1 << 30
    by_group = {name: 0 for name in sizes}
    for backend in entry.backends:
        by_group["abc"[int(str(backend.address).split(".")[2])]] += backend.weight
    assert abs(by_group["a"] / by_group["b"] - 1_000_000 / 999_999) < 1e-3
    assert 0 < by_group["c"] / entry.total_weight < 1e-5


def test_udp_route_and_a_parent_without_port() -> None:
    dns = [{"name": "dns", "protocol": "UDP", "port": 53}]
    route = tcp_route("dns", "dns", 53, [("dns-v2", 1)])
    route["kind"] = "UDPRoute"
    del route["spec"]["parentRefs"][0]["port"]  # every port of the parent
    result = catalog(
        service("dns", "10.96.0.10", [*dns, *HTTP]),
        service("dns-v2", "10.96.0.11", dns),
        endpoint_slice("dns-v2", [{"name": "dns", "protocol": "UDP", "port": 5353}], [("10.244.0.2", READY)]),
        route,
    ).compile()
    assert backends(result.entries[Frontend(IPv4Address("10.96.0.10"), 53, Protocol.UDP)]) == {
        "10.244.0.2:5353": 1
    }
    # The UDP route does not touch the TCP port: no slices for `dns` itself, so it refuses.
    assert result.entries[Frontend(IPv4Address("10.96.0.10"), 80, Protocol.TCP)].backends == ()
