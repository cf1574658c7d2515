"""Defaults written in the docs are the code's: the capacity table of docs/datapath.md against
`Capacities` and the event buffer setting, and every setting whose default a doc states in passing
(`setting`, N by default / `setting` (N) / N (`setting`)) against AgentConfig. docs/configuration.md's
full table is checked in test_docs.py."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields

from meshagent.agent.config import AgentConfig
from meshagent.datapath.loader import Capacities

from tests.deploy.docs_check import code_spans, table_rows
from tests.deploy.manifests import REPO

DOCS = REPO / "docs"
DEFAULTS = {f.name: f.default for f in fields(AgentConfig) if f.default is not MISSING}
PAGE = 4096
MIB = 1 << 20
_NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)\s*(MiB|s)?"


def test_capacity_table_is_the_compiled_default() -> None:
    rows = table_rows((DOCS / "datapath.md").read_text(), "| map | type | entries |")
    documented = {code_spans(row[0])[0]: row[2] for row in rows}
    capacities = Capacities()
    for name, entries in {
        "ma_ipcache": capacities.ipcache,
        "ma_endpoints": capacities.endpoints,
        "ma_policy": capacities.policy,
        "ma_ct": capacities.conntrack,
        "ma_frags": capacities.frags,
    }.items():
        assert documented[name] == f"{entries:,}", name
    mib = DEFAULTS["event_buffer_mib"]
    assert capacities.event_pages * PAGE == mib * MIB, "the loader's default buffer is the setting's"
    assert documented["ma_events"] == f"{mib} MiB (`event_buffer_mib`)"


def mentions() -> list[tuple[str, str, float]]:
    """(doc, setting, number) for each default a doc states in passing."""
    found = []
    for doc in sorted(DOCS.glob("*.md")):
        if doc.name == "configuration.md":
            continue
        text = " ".join(doc.read_text().split())  # a mention may wrap across lines
        for name in DEFAULTS:
            patterns = (
                rf"`{name}`, {_NUMBER} by default",
                rf"`{name}` \({_NUMBER}\)",
                rf"{_NUMBER} \(`{name}`\)",
            )
            for pattern in patterns:
                for match in re.finditer(pattern, text):
                    found.append((doc.name, name, float(match.group(1).replace(",", ""))))
    return found


def test_defaults_stated_in_passing_are_the_schema_defaults() -> None:
    found = mentions()
    # The mentions this test exists for; a rewording that drops one should rewrite the test, not pass.
    assert {(doc, name) for doc, name, _ in found} >= {
        ("datapath.md", "event_buffer_mib"),
        ("flows.md", "event_buffer_mib"),
        ("sources.md", "manifests_poll_seconds"),
    }
    for doc, name, number in found:
        assert number == float(DEFAULTS[name]), f"{doc} gives {name} a default of {number}"
