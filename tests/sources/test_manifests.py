"""Parsing manifest files: objects in the API's shape, problems with file and line."""

from __future__ import annotations

from meshagent.sources.manifests import parse_manifest

GOOD = """\
apiVersion: v1
kind: Namespace
metadata:
  name: web
---
apiVersion: v1
kind: Pod
metadata:
  name: p1
  namespace: web
  labels: {app: web}
spec:
  nodeName: node-1
status:
  podIP: 10.1.0.5
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: np
spec:
  podSelector: {}
"""


def test_multi_document_file_in_api_shape() -> None:
    parsed = parse_manifest(GOOD, "a.yaml")
    assert parsed.problems == ()
    assert [(line, o["kind"]) for line, o in parsed.objects] == [
        (1, "Namespace"),
        (6, "Pod"),
        (17, "NetworkPolicy"),
    ]
    ns, pod, np = (o for _, o in parsed.objects)
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "web"}
    assert pod["status"]["podIPs"] == [{"ip": "10.1.0.5"}] and pod["spec"]["nodeName"] == "node-1"
    assert np["metadata"]["namespace"] == "default"  # as kubectl applies it
    assert pod["metadata"]["uid"] == parse_manifest(GOOD, "b.yaml").objects[1][1]["metadata"]["uid"]


def test_malformed_yaml_is_reported_with_line() -> None:
    text = GOOD + "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [broken\n"
    parsed = parse_manifest(text, "bad.yaml")
    assert parsed.fatal
    (problem,) = parsed.problems
    assert problem.path == "bad.yaml" and problem.line >= 26
    assert str(problem).startswith(f"bad.yaml:{problem.line}: malformed YAML")


def test_unknown_kind_is_skipped_with_its_line_and_the_rest_kept() -> None:
    text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n" + GOOD
    parsed = parse_manifest(text, "mixed.yaml")
    assert not parsed.fatal
    (problem,) = parsed.problems
    assert problem.line == 1 and "unknown kind 'Deployment'" in problem.message
    assert len(parsed.objects) == 3


def test_invalid_objects_are_fatal_problems() -> None:
    cases = {
        "apiVersion: v1\nkind: Pod\nmetadata: {}\n": "without metadata.name",
        "apiVersion: v1beta1\nkind: Pod\nmetadata: {name: p}\n": "needs apiVersion 'v1'",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: 10.0.0.300}\n": "not an IP address",
        "- just\n- a list\n": "must be a mapping",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {a: 1}}\n": "strings to strings",
        "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\n"
        "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n": "also defined at line 1",
    }
    for text, message in cases.items():
        parsed = parse_manifest(text, "x.yaml")
        assert parsed.fatal, text
        assert any(message in p.message for p in parsed.problems), (text, parsed.problems)


def test_kind_list_and_empty_documents() -> None:
    text = (
        "---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Node, metadata: {name: n1}}\n"
    )
    parsed = parse_manifest(text, "l.yaml")
    assert parsed.problems == () and [o["metadata"]["name"] for _, o in parsed.objects] == ["n1"]
