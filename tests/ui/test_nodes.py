"""The cluster's node addresses read from a manifest directory's Node objects."""

from __future__ import annotations

from pathlib import Path

from meshagent.ui.nodes import node_addresses

NODES = """\
apiVersion: v1
kind: Node
metadata: {name: node-1}
status:
  addresses:
  - {type: InternalIP, address: 192.168.254.11}
  - {type: ExternalIP, address: 198.51.100.4}
  - {type: Hostname, address: node-1}
  - {type: InternalIP, address: "fd00:0:0::0011"}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
status:
  addresses: [{type: InternalIP, address: 192.168.254.12}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
"""


def test_every_address_of_every_node_in_the_flows_form(tmp_path: Path) -> None:
    (tmp_path / "nodes.yaml").write_text(NODES)
    assert node_addresses(tmp_path) == {
        "192.168.254.11": "node-1",
        "198.51.100.4": "node-1",
        "fd00::11": "node-1",  # a dual-stack node's IPv6 address, compressed as flows print it
        "192.168.254.12": "node-2",
    }


def test_a_directory_without_nodes_names_none(tmp_path: Path) -> None:
    (tmp_path / "ns.yaml").write_text(NODES.split("---\n")[-1])
    assert node_addresses(tmp_path) == {}
