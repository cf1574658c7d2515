"""The docs this part owns stay true to the code: the configuration reference matches AgentConfig and the
real CLI, every `meshagent` command shown parses (and `run` commands load as a configuration), the drop
reasons in troubleshooting cover every reason the datapath defines, and relative links lead somewhere."""

from __future__ import annotations

import re
import time
from dataclasses import MISSING, fields
from typing import Any, cast

import click
import pytest
from meshagent.agent.config import AgentConfig
from meshagent.cli import run as run_command
from meshagent.cli.aggregate import parse_keys
from meshagent.cli.filterflags import filter_items
from meshagent.cli.flows import build_request
from meshagent.model.events import DropReason
from meshagent.observer.convert import DROP_REASON_TO_HUBBLE
from meshagent.observer.limits import ServerLimits
from meshagent.observer.proto.flow import flow_pb2
from meshagent.observer.query import parse_request

from tests.cliparse import parse, run_config
from tests.deploy.docs_check import code_spans, command_lines, relative_links, resolve, table_rows
from tests.deploy.manifests import REPO

DOCS = REPO / "docs"
OWNED = ("architecture.md", "configuration.md", "troubleshooting.md", "deploy.md")


def run_flags() -> dict[str, str]:
    """setting name -> the flag of `meshagent run` that sets it (the longest name), from the real CLI."""
    return {
        str(param.name): max([*param.opts, *param.secondary_opts], key=len)
        for param in run_command.run_command.params
        if isinstance(param, click.Option) and param.name != "config_file"
    }


def shown_default(value: Any) -> str:
    if value is MISSING:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, ServerLimits):
        return "defaults in [flows](flows.md#server-limits)"  # one table there lists every limit
    return f"`{value}`"


def test_configuration_reference_matches_the_code() -> None:
    rows = table_rows((DOCS / "configuration.md").read_text(), "| YAML key |")
    documented = {code_spans(row[0])[0]: row for row in rows}
    settings = {f.name: f for f in fields(AgentConfig)}
    assert list(documented) == list(settings), "the table lists the settings of AgentConfig, in its order"
    flags = run_flags()
    assert set(flags) <= set(settings), f"flags for unknown settings: {set(flags) - set(settings)}"
    for name, (_key, env, flag, default, meaning) in documented.items():
        assert code_spans(env)[0] == f"MESHAGENT_{name.upper()}", name
        assert (code_spans(flag) or ["—"])[0] == flags.get(name, "—"), f"{name}: flag"
        assert default == shown_default(settings[name].default), f"{name}: default"
        assert len(meaning) > 20, f"{name}: say what it means"
    assert "`NODE_NAME`" in documented["node"][1]


def _documented_commands() -> list[tuple[str, list[str]]]:
    return [(doc, words) for doc in OWNED for words in command_lines((DOCS / doc).read_text())]


def test_docs_show_commands() -> None:
    shown = _documented_commands()
    assert len(shown) >= 10
    assert {words[1] for _, words in shown} >= {"run", "flows", "status", "policy", "uninstall"}


@pytest.mark.parametrize(
    ("doc", "words"), [pytest.param(d, w, id=f"{d}: {' '.join(w)[:70]}") for d, w in _documented_commands()]
)
def test_documented_command_parses(doc: str, words: list[str]) -> None:
    try:
        ctx = parse(words[1:])
    except click.UsageError as err:
        pytest.fail(f"{doc}: `{' '.join(words)}` does not parse: {err.format_message()}")
    if ctx.command.name == "flows":
        # The filters, times and keys are valid too: built as the CLI builds them and checked with the
        # server's own request rules (both raise on a bad value).
        request = build_request(ctx.params, filter_items(ctx, ctx.params), now_ns=time.time_ns())
        parse_request(request)
        if ctx.params["aggregate_by"]:
            parse_keys(ctx.params["aggregate_by"])
    if ctx.command.name == "run" and ctx.params["config_file"] is None:
        # A `run` line must also make a valid configuration (no contradictions), as `meshagent run` checks.
        # (The one with --config is the DaemonSet's; test_container.py loads its ConfigMap.)
        run_config(words[1:], {"NODE_NAME": "node-a"})


def test_troubleshooting_explains_every_drop_reason() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    rows = table_rows(text, "| reason |")
    by_name = {code_spans(row[0])[0]: row for row in rows}
    types_h = (REPO / "bpf" / "lib" / "types.h").read_text()
    in_c = dict(re.findall(r"#define MA_DROP_(\w+) (\d+)", types_h))
    for reason in DropReason:
        if reason is DropReason.NONE:
            continue
        assert reason.name in by_name, f"troubleshooting.md does not explain {reason.name}"
        row = by_name[reason.name]
        assert code_spans(row[1]) == [str(int(reason))], f"{reason.name}: number"
        hubble = flow_pb2.DropReason.Name(DROP_REASON_TO_HUBBLE[reason])
        assert hubble in code_spans(row[2]), f"{reason.name}: shown as {hubble} by flows and metrics"
        assert len(row[3]) > 20 and len(row[4]) > 10, f"{reason.name}: meaning and what to do"
    for name, number in in_c.items():
        if name == "NONE":
            continue
        assert name in by_name, f"bpf/lib/types.h defines MA_DROP_{name}, troubleshooting.md lacks it"
        assert code_spans(by_name[name][1]) == [number]


@pytest.mark.parametrize("doc", OWNED)
def test_links_resolve(doc: str) -> None:
    path = DOCS / doc
    for target in relative_links(path.read_text()):
        assert resolve(path, target).exists(), f"{doc}: link to {target} leads nowhere"


def test_docs_link_the_existing_ones() -> None:
    linked = {resolve(DOCS / doc, t) for doc in OWNED for t in relative_links((DOCS / doc).read_text())}
    for existing in ("datapath.md", "policy.md", "flows.md", "sources.md"):
        assert (DOCS / existing).resolve() in linked, f"none of {OWNED} links {existing}"


def test_architecture_has_both_paths() -> None:
    text = (DOCS / "architecture.md").read_text()
    blocks = re.findall(r"```(?:text)?\n(.*?)```", text, re.S)
    diagram = "\n".join(blocks)
    for stage in (
        "source",
        "store",
        "reconciler",
        "compiler",
        "ma_policy",
        "tc",
        "ring buffer",
        "EventReader",
        "FlowPipeline",
        "gRPC",
        "metrics",
        "export",
    ):
        assert stage.lower() in diagram.lower(), f"the diagrams do not show {stage}"


def _idle_reconciler() -> Any:
    """A reconciler that was never started, for the families its collector exposes."""
    from meshagent.agent.enricher import ClusterEnricher
    from meshagent.agent.reconciler import Reconciler
    from meshagent.datapath.discovery import EndpointInterfaces
    from meshagent.policy.compiler import PolicyCompiler
    from meshagent.sources.store import ObjectStore

    compiler = PolicyCompiler()
    return Reconciler(
        store=ObjectStore(),
        compiler=compiler,
        datapath=cast(Any, None),
        node="node-a",
        interfaces=EndpointInterfaces(),
        enricher=ClusterEnricher(rule_lookup=compiler.rules.lookup),
    )


def test_troubleshooting_names_metrics_the_agent_exposes() -> None:
    """The metric names in the table exist in the exposition of the agent's real metrics, read back with
    Prometheus' own text parser."""
    from meshagent.agent.metrics import ReconcilerCollector
    from meshagent.observer.metrics import FlowMetrics, MapUsage
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    metrics = FlowMetrics(
        node_name="node-a",
        version="test",
        map_usage=lambda: [MapUsage("ma_ct", 1, 10)],
        source_sync=lambda: {"kubernetes": True},
    )
    metrics.registry.register(ReconcilerCollector(_idle_reconciler()))
    exposed = {f.name for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    rows = table_rows((DOCS / "troubleshooting.md").read_text(), "| metric |")
    named = [code_spans(row[0])[0].split("{")[0] for row in rows]
    assert len(named) >= 4
    for name in named:
        assert name.removesuffix("_total") in exposed, f"{name} is not a metric the agent exposes"
