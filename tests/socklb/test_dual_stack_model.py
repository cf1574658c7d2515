"""The pure side of dual-stack Services (no kernel): ipFamilies, ipFamilyPolicy and clusterIPs checked as
the API server checks them, EndpointSlices of both address types, one frontend per family with the
backends of its own family, and the IPv6 map and event encodings."""

from __future__ import annotations

import ctypes
import socket
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshagent.agent.services import translation_event
from meshagent.datapath.maps import lb6_events, lb6_services, lb_events
from meshagent.model.kernel_state import Protocol, Verdict
from meshagent.model.services import (
    MAX_BACKENDS,
    Frontend,
    LBBackend,
    LBEntry,
    ServiceInputError,
    ServiceTranslation,
)
from meshagent.services.catalog import ServiceCatalog
from meshagent.services.diff import diff
from meshagent.services.parse import parse_endpoint_slice, parse_service

from tests.socklb.helpers import endpoint_slice, service, tcp_route

HTTP = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
SLICE_HTTP = [{"name": "http", "protocol": "TCP", "port": 8080}]
READY = {"ready": True}
V4, V6 = "10.96.0.1", "fd00:96::1"


def dual(name: str = "web", ips: tuple[str, ...] = (V4, V6), **spec: Any) -> dict[str, Any]:
    obj = service(name, ips[0], HTTP, **spec)
    obj["spec"]["clusterIPs"] = list(ips)
    return obj


def test_a_dual_stack_service_keeps_both_cluster_ips_primary_first() -> None:
    svc = parse_service(dual(ips=(V6, V4), ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv6", "IPv4"]))
    assert svc.cluster_ips == (IPv6Address(V6), IPv4Address(V4))
    single6 = parse_service(service("v6", V6, HTTP, ipFamilyPolicy="SingleStack", ipFamilies=["IPv6"]))
    assert single6.cluster_ips == (IPv6Address(V6),)
    # No policy with two addresses: the API server would have set RequireDualStack.
    assert len(parse_service(dual()).cluster_ips) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"ipFamilyPolicy": "SingleStack"}, "SingleStack allows one family"),
        ({"ipFamilyPolicy": "DualStack"}, "'DualStack' is not one of"),
        ({"ipFamilies": ["IPv4", "IPv7"]}, "spec.ipFamilies[1] 'IPv7' is not IPv4 or IPv6"),
        ({"ipFamilies": ["IPv4", "IPv4"]}, "names a family twice"),
        ({"ipFamilies": ["IPv4", {"family": "IPv6"}]}, "spec.ipFamilies[1] {'family': 'IPv6'} is not IPv4"),
        ({"ipFamilies": ["IPv6", "IPv4"]}, "spec.clusterIPs[0] 10.96.0.1 is not of spec.ipFamilies[0] IPv6"),
        ({"ipFamilies": ["IPv4"]}, "more addresses than spec.ipFamilies has families"),
        ({"clusterIPs": [V4, "10.96.0.2"]}, "two addresses of the same family"),
        ({"clusterIPs": [V4, V6, "fd00:96::2"]}, "at most one per family"),
        ({"clusterIPs": [V6, V4]}, "spec.clusterIPs[0] 'fd00:96::1' is not spec.clusterIP '10.96.0.1'"),
        (
            {"clusterIP": "None", "clusterIPs": ["None", V6]},
            "a headless Service has the single address 'None'",
        ),
    ],
)
def test_inconsistent_families_are_rejected_with_the_reason(spec: dict[str, Any], message: str) -> None:
    obj = dual()
    obj["spec"].update(spec)
    with pytest.raises(ServiceInputError) as info:
        parse_service(obj)
    assert "Service default/web" in str(info.value) and message in str(info.value)


def test_require_dual_stack_with_one_family_is_rejected() -> None:
    obj = service("web", V4, HTTP, ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv4"])
    with pytest.raises(ServiceInputError, match="RequireDualStack needs both families"):
        parse_service(obj)


def test_endpoint_slices_of_both_address_types() -> None:
    six = parse_endpoint_slice(
        endpoint_slice("web", SLICE_HTTP, [("fd00:244::5", READY)], address_type="IPv6")
    )
    assert six.endpoints[0].addresses == (IPv6Address("fd00:244::5"),)
    fqdn = parse_endpoint_slice(
        endpoint_slice("web", SLICE_HTTP, [("db.example", READY)], address_type="FQDN")
    )
    assert fqdn.endpoints == ()  # names: nothing a socket hook can translate to
    with pytest.raises(
        ServiceInputError, match=r"endpoints\[0\]\.addresses: address 'fd00:244::5' is not IPv4"
    ):
        parse_endpoint_slice(endpoint_slice("web", SLICE_HTTP, [("fd00:244::5", READY)]))
    with pytest.raises(ServiceInputError, match=r"'10\.244\.0\.5' is not IPv6"):
        parse_endpoint_slice(endpoint_slice("web", SLICE_HTTP, [("10.244.0.5", READY)], address_type="IPv6"))
    with pytest.raises(ServiceInputError, match=r"addressType 'IPv5' is not one of IPv4, IPv6, FQDN"):
        parse_endpoint_slice(endpoint_slice("web", SLICE_HTTP, [], address_type="IPv5"))


def test_each_family_gets_a_frontend_with_the_backends_of_its_family() -> None:
    cat = ServiceCatalog()
    for obj in (
        dual(),
        endpoint_slice("web", SLICE_HTTP, [("10.244.0.5", READY), ("10.244.0.6", READY)]),
        endpoint_slice("web", SLICE_HTTP, [("fd00:244::5", READY)], address_type="IPv6"),
    ):
        assert cat.upsert(obj["kind"], obj) is None
    entries = cat.compile().entries
    four = entries[Frontend(IPv4Address(V4), 80, Protocol.TCP)]
    six = entries[Frontend(IPv6Address(V6), 80, Protocol.TCP)]
    assert [str(b.address) for b in four.backends] == ["10.244.0.5", "10.244.0.6"]
    assert [(str(b.address), b.port) for b in six.backends] == [("fd00:244::5", 8080)]
    assert sorted(entries) == [four.frontend, six.frontend]  # IPv4 first; the families do not compare


def test_a_route_splits_each_family_among_that_familys_endpoints() -> None:
    cat = ServiceCatalog()
    for obj in (
        dual("shop", (V4, V6)),
        dual("blue", ("10.96.0.2", "fd00:96::2")),
        dual("green", ("10.96.0.3", "fd00:96::3")),
        endpoint_slice("blue", SLICE_HTTP, [("fd00:244::b", READY)], address_type="IPv6"),
        endpoint_slice("green", SLICE_HTTP, [("fd00:244::c", READY)], address_type="IPv6"),
        endpoint_slice("green", SLICE_HTTP, [("10.244.0.12", READY)])
        | {"metadata": _meta("green-v4", "green")},
        tcp_route("shop", "shop", 80, [("blue", 90), ("green", 10)]),
    ):
        assert cat.upsert(obj["kind"], obj) is None
    entries = cat.compile().entries
    six = entries[Frontend(IPv6Address(V6), 80, Protocol.TCP)]
    assert {str(b.address): b.weight for b in six.backends} == {"fd00:244::b": 90, "fd00:244::c": 10}
    four = entries[Frontend(IPv4Address(V4), 80, Protocol.TCP)]
    assert [str(b.address) for b in four.backends] == ["10.244.0.12"]  # blue has no IPv4 endpoint


def _meta(name: str, service_name: str) -> dict[str, Any]:
    return {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service_name}}


def test_a_rejected_object_leaves_the_others_and_its_last_good_version() -> None:
    cat = ServiceCatalog()
    assert cat.upsert("Service", dual()) is None
    assert cat.upsert("Service", service("other", "10.96.0.9", HTTP)) is None
    error = cat.upsert("Service", dual(ipFamilyPolicy="SingleStack"))
    assert error is not None and "SingleStack allows one family" in str(error)
    frontends = {(str(f.address), f.port) for f in cat.compile().entries}
    assert frontends == {(V4, 80), (V6, 80), ("10.96.0.9", 80)}


def test_an_entry_never_mixes_families() -> None:
    with pytest.raises(ValueError, match="other address family"):
        LBEntry(Frontend(IPv6Address(V6), 80, Protocol.TCP), (LBBackend(IPv4Address("10.244.0.1"), 80, 1),))


def test_a_diff_over_both_families_is_per_frontend() -> None:
    four = LBEntry(
        Frontend(IPv4Address(V4), 80, Protocol.TCP), (LBBackend(IPv4Address("10.244.0.1"), 80, 1),)
    )
    six = LBEntry(Frontend(IPv6Address(V6), 80, Protocol.TCP), (LBBackend(IPv6Address("fd00::1"), 80, 1),))
    changed = LBEntry(six.frontend, (LBBackend(IPv6Address("fd00::2"), 80, 1),))
    result = diff({four.frontend: four, six.frontend: six}, {four.frontend: four, six.frontend: changed})
    assert result.upserts == (changed,) and result.removals == ()


_address6 = st.integers(0, 2**128 - 1).map(IPv6Address)
_backend6 = st.builds(LBBackend, _address6, st.integers(1, 65535), st.integers(0, 1000))


@given(
    address=_address6,
    port=st.integers(1, 65535),
    protocol=st.sampled_from([Protocol.TCP, Protocol.UDP]),
    members=st.lists(_backend6, max_size=MAX_BACKENDS),
    affinity=st.integers(0, 86400),
)
def test_ipv6_map_encoding_round_trips(
    address: IPv6Address, port: int, protocol: Protocol, members: list[LBBackend], affinity: int
) -> None:
    entry = LBEntry(Frontend(address, port, protocol), tuple(members), affinity_timeout=affinity)
    key, value = lb6_services.encode(entry)
    assert bytes(key.addr_net) == address.packed  # network order, as the socket hook compares it
    assert lb6_services.decode(key, value) == entry


def test_ipv6_translation_event_decoding() -> None:
    record = lb6_events.EventRecord6(
        ts_ns=5,
        cookie=7,
        netns_cookie=9,
        service_addr_net=lb6_services.addr6_to_net(IPv6Address(V6)),
        backend_addr_net=lb6_services.addr6_to_net(IPv6Address("fd00:244::5")),
        service_port_net=socket.htons(80),
        backend_port_net=socket.htons(8080),
        protocol=6,
        type=lb_events.TRANSLATED,
    )
    event = lb6_events.decode(bytes(record))
    assert (event.timestamp_ns, event.socket_cookie, event.netns_cookie) == (5, 7, 9)
    assert event.frontend == Frontend(IPv6Address(V6), 80, Protocol.TCP)
    assert event.backend == (IPv6Address("fd00:244::5"), 8080)
    record.type = lb_events.REFUSED
    assert lb6_events.decode(bytes(record)).backend is None
    assert ctypes.sizeof(record) == 64


def test_decisions_of_both_families_become_datapath_events() -> None:
    def decided(frontend: Frontend, backend: Any) -> ServiceTranslation:
        return ServiceTranslation(1, 2, 3, frontend, backend)

    four = translation_event(
        decided(Frontend(IPv4Address(V4), 80, Protocol.TCP), (IPv4Address("10.244.0.1"), 8080))
    )
    assert four is not None and four.daddr == IPv4Address("10.244.0.1") and four.dport == 8080
    six = decided(Frontend(IPv6Address(V6), 80, Protocol.TCP), (IPv6Address("fd00::1"), 8080))
    event = translation_event(six)
    # The client is not known at connect() time: the unspecified address of the Service's family.
    assert event.saddr == IPv6Address(0) and event.daddr == IPv6Address("fd00::1") and event.dport == 8080
    refused = translation_event(decided(Frontend(IPv6Address(V6), 80, Protocol.TCP), None))
    assert refused.verdict == Verdict.DENIED and refused.daddr == IPv6Address(V6)
