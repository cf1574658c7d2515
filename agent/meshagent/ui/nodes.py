"""The cluster's node addresses from a manifest directory's Node objects, for the service map: an agent
labels another node's address as the world (NetworkPolicy gives remote nodes no identity), and the map
shows it as that node instead."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

from meshagent.sources.directory_source import DirectorySource
from meshagent.sources.events import ObjectEvent, SourceEvent
from meshagent.sources.kinds import Kind


def node_addresses(directory: Path) -> dict[str, str]:
    """address -> node name, for every IP address a Node object lists (hostnames are skipped); read
    with the same directory source as `meshagent run --manifests`."""
    events: list[SourceEvent] = []
    DirectorySource(directory, events.append).scan_now()
    found: dict[str, str] = {}
    for event in events:
        if not isinstance(event, ObjectEvent) or event.kind != Kind.NODE:
            continue
        for entry in (event.obj.get("status") or {}).get("addresses") or []:
            try:
                # The flows' form of the address: an IPv6 one compressed, as Hubble prints it.
                found[str(ip_address(str(entry.get("address", ""))))] = event.name
            except ValueError:
                continue  # a hostname
    return found
