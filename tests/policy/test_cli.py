"""`meshagent policy list|trace` end to end through the real argument parser, on manifest files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from meshagent.cli.main import main

MANIFESTS = Path(__file__).parent / "manifests"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_shows_what_selects_each_endpoint_and_rejected_objects(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "policy", "list", "--manifests", str(MANIFESTS))
    assert code == 0
    block_a = out.split("x/b ")[0]
    assert "x/a  ip=10.0.0.1" in block_a and "NetworkPolicy x/web-from-clients (Ingress)" in block_a
    assert "AdminNetworkPolicy no-ssh (priority 10)" in block_a
    assert "ingress: isolated" in block_a and "egress: open" in block_a
    assert "NetworkPolicy x/db-isolated (Egress, Ingress)" in out
    assert "rejected:" in out and "10.9.0.0/16 is outside the cidr 10.0.0.0/24" in out

    code, out, _ = run(
        capsys, "policy", "list", "--manifests", str(MANIFESTS), "--node", "node-2", "-o", "json"
    )
    data = json.loads(out)
    assert [(e["namespace"], e["name"]) for e in data["endpoints"]] == [("y", "c")]
    assert data["endpoints"][0]["admin_policies"] == [["no-ssh", 10]]


def test_trace_allowed_by_named_port_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "policy",
        "trace",
        "--manifests",
        str(MANIFESTS),
        "--from",
        "y/c",
        "--to",
        "x/a",
        "--port",
        "8080",
    )
    assert code == 0
    assert out.startswith("y/c (10.0.1.3) -> x/a (10.0.0.1) tcp/8080: ALLOWED")
    assert "compiled: ALLOWED by NetworkPolicy x/web-from-clients ingress[0]" in out
    assert "AdminNetworkPolicy no-ssh ingress[0] (Deny): no match: tcp/8080 is not tcp/22" in out


def test_trace_default_deny_names_the_isolating_policy_and_why_rules_missed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        capsys,
        "policy",
        "trace",
        "--manifests",
        str(MANIFESTS),
        "--from",
        "x/b",
        "--to",
        "x/a",
        "--port",
        "8080",
        "-o",
        "json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["verdict"] == "DENIED" and data["agrees"]
    egress, ingress = data["directions"]
    # b's egress is isolated by db-isolated, which has no egress rule at all: a default deny.
    assert egress["direction"] == "egress" and egress["verdict"] == "DENIED"
    assert egress["isolated_by"] == ["x/db-isolated"] and egress["compiled"]["default"]
    assert ingress["verdict"] == "DENIED" and ingress["deciding_rule"] is None
    assert "is not namespaces [team=b] and pods [app=client]" in ingress["rules"][-1]["why"]


def test_trace_from_an_address_and_admin_deny(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "policy",
        "trace",
        "--manifests",
        str(MANIFESTS),
        "--from-ip",
        "192.0.2.1",
        "--to",
        "x/a",
        "--port",
        "8080",
        "--protocol",
        "udp",
    )
    assert code == 0 and ": DENIED" in out.splitlines()[0]
    code, out, _ = run(
        capsys,
        "policy",
        "trace",
        "--manifests",
        str(MANIFESTS),
        "--from-ip",
        "10.0.1.3",
        "--to",
        "x/b",
        "--port",
        "22",
    )
    assert "ingress to x/b: DENIED" in out and "denied by an admin rule (AdminNetworkPolicy no-ssh" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "nope", "--to", "x/a"], "expected NAMESPACE/POD"),
        (["--from", "x/zzz", "--to", "x/a"], "no pod x/zzz"),
        (["--from-ip", "1.2.3", "--to", "x/a"], "not an IP address"),
        (["--from-ip", "1.2.3.4", "--to-ip", "5.6.7.8"], "at least one end must be a pod"),
    ],
)
def test_trace_bad_requests_say_why(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run(capsys, "policy", "trace", "--manifests", str(MANIFESTS), *args, "--port", "80")
    assert code == 2 and message in err


def test_missing_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "policy", "list", "--manifests", str(tmp_path / "absent"))
    assert code == 2 and "is not a directory" in err


def test_reads_the_directory_as_the_agent_does(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The same reader as `meshagent run --manifests`: hidden files skipped, the first definition of an
    object wins (the other is reported), namespaces that pods use exist implicitly."""
    pod = (
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: z}}\n"
        "spec: {{nodeName: node-1}}\nstatus: {{podIP: {ip}}}\n"
    )
    (tmp_path / "a.yaml").write_text(pod.format(ip="10.0.0.1"))
    (tmp_path / "b.yaml").write_text(pod.format(ip="10.0.0.2"))
    (tmp_path / ".hidden.yaml").write_text(pod.format(ip="10.0.0.3").replace("name: p", "name: q"))
    code, out, _ = run(capsys, "policy", "list", "--manifests", str(tmp_path), "-o", "json")
    assert code == 0
    data = json.loads(out)
    assert [(e["namespace"], e["name"], e["ip"]) for e in data["endpoints"]] == [("z", "p", "10.0.0.1")]
    assert any("b.yaml:1" in e and "already defined in a.yaml:1" in e for e in data["rejected"])


DUAL_STACK_CLIENT = """
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: y, labels: {app: client}}
spec: {nodeName: node-1, containers: [{name: main}]}
status: {podIP: 10.0.1.4, podIPs: [{ip: 10.0.1.4}, {ip: 'fd00:1::4'}]}
"""


def test_trace_ipv6_addresses(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for manifest in MANIFESTS.iterdir():
        (tmp_path / manifest.name).write_text(manifest.read_text())
    (tmp_path / "dual.yaml").write_text(DUAL_STACK_CLIENT)
    # The pod's IPv6 address is the pod: its identity, so the selector rule allows it.
    code, out, _ = run(
        capsys, "policy", "trace", "--manifests", str(tmp_path), "--from-ip", "fd00:1::4", "--to", "x/a",
        "--port", "8080",
    )  # fmt: skip
    assert code == 0
    assert out.startswith("y/d (fd00:1::4) -> x/a (10.0.0.1) tcp/8080: ALLOWED"), out
    # An IPv6 address nobody holds is the world's.
    code, out, _ = run(
        capsys, "policy", "trace", "--manifests", str(tmp_path), "--from-ip", "2001:db8::1", "--to", "x/a",
        "--port", "8080",
    )  # fmt: skip
    assert code == 0 and out.startswith("2001:db8::1 -> x/a (10.0.0.1) tcp/8080: DENIED"), out


def test_trace_shows_a_pods_identity_unmarked_for_its_ipv6_address(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The ipcache marks a pod's IPv6 address for the policy map; the trace shows the pod's identity."""
    for manifest in MANIFESTS.iterdir():
        (tmp_path / manifest.name).write_text(manifest.read_text())
    (tmp_path / "dual.yaml").write_text(DUAL_STACK_CLIENT)
    shown = []
    for source in ("fd00:1::4", "10.0.1.4"):
        code, out, _ = run(
            capsys, "policy", "trace", "--manifests", str(tmp_path), "--from-ip", source, "--to", "x/a",
            "--port", "8080", "-o", "json",
        )  # fmt: skip
        assert code == 0
        ingress = [d for d in json.loads(out)["directions"] if d["direction"] == "ingress"]
        assert ingress and ingress[0]["compiled"]["verdict"] == "ALLOWED"
        shown.append(ingress[0]["compiled"]["peer_identity"])
    assert shown[0] == shown[1] and shown[0] < 1 << 24
