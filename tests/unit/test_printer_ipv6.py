"""The printer's address forms: an IPv6 address with a port in brackets, as in a URL."""

from __future__ import annotations

from meshagent.cli.printer import endpoint_text
from meshagent.observer.proto.flow import flow_pb2 as pb


def test_an_ipv6_address_with_a_port_is_bracketed() -> None:
    assert endpoint_text(pb.Endpoint(), "fd00::1", 80) == "[fd00::1]:80"
    assert endpoint_text(pb.Endpoint(), "fd00::1", None) == "fd00::1"
    assert endpoint_text(pb.Endpoint(), "10.0.0.1", 80) == "10.0.0.1:80"
    # A pod's name stands for its address, whatever the family.
    assert endpoint_text(pb.Endpoint(pod_name="p", namespace="n"), "fd00::1", 80) == "n/p:80"
