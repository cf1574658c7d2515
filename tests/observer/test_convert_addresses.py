"""Flow addresses: IPv6 flows say so (IP.ipVersion, ICMPv6), and a frame with no IP addresses (dropped
before any could be read) names its local side from the endpoint, not 0.0.0.0."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from meshagent.model.events import DropReason, EventType
from meshagent.model.kernel_state import Direction, Verdict
from meshagent.observer.convert import FlowBuilder
from meshagent.observer.proto.flow import flow_pb2 as pb

from tests.observer import helpers as h

UNSPECIFIED = IPv4Address(0)


def test_a_frame_without_addresses_names_its_endpoint() -> None:
    enricher = h.enricher()
    enricher.endpoint_addresses[11] = h.SERVER_IP  # the events' endpoint id (helpers.event)
    builder = FlowBuilder(enricher=enricher, node_name="node-a")
    for direction, local in ((Direction.INGRESS, "destination"), (Direction.EGRESS, "source")):
        ev = h.event(
            type=EventType.DROP,
            verdict=None,
            drop=DropReason.ETHERTYPE,
            direction=direction,
            saddr=UNSPECIFIED,
            daddr=UNSPECIFIED,
            protocol=0,
            src_identity=0,
            dst_identity=0,
        )
        f = builder.build(ev)
        ip = f.IP.destination if local == "destination" else f.IP.source
        other = f.IP.source if local == "destination" else f.IP.destination
        assert (ip, other) == (str(h.SERVER_IP), "0.0.0.0")
        assert getattr(f, local).pod_name == "server-5c4b" and getattr(f, local).ID == 11
    # Unknown endpoint: nothing to fill, the addresses stay as the datapath gave them.
    bare = FlowBuilder(enricher=h.enricher(), node_name="node-a").build(
        h.event(type=EventType.DROP, drop=DropReason.ETHERTYPE, saddr=UNSPECIFIED, daddr=UNSPECIFIED)
    )
    assert (bare.IP.source, bare.IP.destination) == ("0.0.0.0", "0.0.0.0")


def test_ipv6_flows_say_so() -> None:
    builder = FlowBuilder(enricher=h.enricher(), node_name="node-a")
    ev = h.event(saddr=IPv6Address("fd00::1"), daddr=IPv6Address("fd00::2"), verdict=Verdict.ALLOWED)
    f = builder.build(ev)
    assert (f.IP.ipVersion, f.IP.source, f.IP.destination) == (pb.IPv6, "fd00::1", "fd00::2")
    icmp = builder.build(
        h.event(saddr=IPv6Address("fd00::1"), daddr=IPv6Address("fd00::2"), protocol=58)._replace(
            icmp_type=128, icmp_code=0
        )
    )
    assert icmp.l4.WhichOneof("protocol") == "ICMPv6" and icmp.l4.ICMPv6.type == 128
    assert builder.build(h.event()).IP.ipVersion == pb.IPv4
