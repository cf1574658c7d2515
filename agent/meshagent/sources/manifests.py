"""Reading one manifest file: multi-document YAML (or JSON) into objects in the API's shape.

Every problem carries the file and the line of the document it is about. A problem is
either fatal for the file (broken YAML, an object of a known kind that the API server
would refuse) or not (an unknown kind, which is skipped): the directory source keeps a
file's last good objects when it turns fatal, so a half-saved edit loses nothing.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from typing import Any

import yaml

from meshagent.sources.events import ObjectKey, object_key
from meshagent.sources.kinds import KIND_INFO, Kind

# Stable uids: the same object in the same place keeps its uid across agent restarts.
_UID_NAMESPACE = uuid.UUID("5b7a3f0e-2d4c-4f0a-9a57-6d3c1e8b9f21")


@dataclass(frozen=True)
class ManifestProblem:
    path: str
    line: int  # 1-based line of the document (or of the YAML error)
    message: str
    fatal: bool

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class ParsedManifest:
    objects: tuple[tuple[int, dict[str, Any]], ...]  # (line, object) in file order
    problems: tuple[ManifestProblem, ...]

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.problems)


class _Invalid(Exception):
    pass


def parse_manifest(text: str, path: str) -> ParsedManifest:
    objects: list[tuple[int, dict[str, Any]]] = []
    problems: list[ManifestProblem] = []
    seen: dict[ObjectKey, int] = {}
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            line = node.start_mark.line + 1
            doc = loader.construct_document(node)
            for obj in _expand_list(doc):
                try:
                    normalized = normalize(obj)
                except _Invalid as err:
                    problems.append(ManifestProblem(path, line, str(err), fatal=True))
                    continue
                if normalized is None:
                    what = f"unknown kind {obj.get('kind')!r} (apiVersion {obj.get('apiVersion')!r}): ignored"
                    problems.append(ManifestProblem(path, line, what, fatal=False))
                    continue
                key = object_key(normalized, Kind(normalized["kind"]))
                if key in seen:
                    problems.append(
                        ManifestProblem(path, line, f"{key} is also defined at line {seen[key]}", fatal=True)
                    )
                    continue
                seen[key] = line
                objects.append((line, normalized))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problems.append(ManifestProblem(path, line, f"malformed YAML: {_one_line(err)}", fatal=True))
    finally:
        loader.dispose()
    return ParsedManifest(tuple(objects), tuple(problems))


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _expand_list(doc: Any) -> list[Any]:
    """`kind: List` (as kubectl writes) stands for its items."""
    if doc is None:
        return []
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        return list(doc["items"])
    return [doc]


def normalize(obj: Any) -> dict[str, Any] | None:
    """The object as the API server would serve it; None for a kind we do not watch.

    Raises _Invalid for what the API server would refuse.
    """
    if not isinstance(obj, dict):
        raise _Invalid(f"a document must be a mapping, not {type(obj).__name__}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        raise _Invalid("missing 'kind'")
    try:
        info = KIND_INFO[Kind(kind)]
    except ValueError:
        return None
    if obj.get("apiVersion") != info.api_version:
        raise _Invalid(f"{kind} needs apiVersion {info.api_version!r}, not {obj.get('apiVersion')!r}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise _Invalid(f"{kind} without metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise _Invalid(f"{kind} without metadata.name")
    for field in ("labels", "annotations"):
        value = meta.get(field)
        strings = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
        if value is not None and not strings:
            raise _Invalid(f"{kind} {name}: metadata.{field} must map strings to strings")
    out = dict(obj)
    meta = dict(meta)
    out["metadata"] = meta
    if info.namespaced:
        namespace = meta.get("namespace") or "default"
        if not isinstance(namespace, str):
            raise _Invalid(f"{kind} {name}: metadata.namespace must be a string")
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    meta["uid"] = str(uuid.uuid5(_UID_NAMESPACE, f"{kind}/{meta.get('namespace', '')}/{name}"))
    if info.kind is Kind.NAMESPACE:
        # The API server labels every namespace with its name; namespace selectors rely on it.
        meta["labels"] = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": name}
    if info.kind is Kind.POD:
        _normalize_pod(out)
    return out


def _normalize_pod(pod: dict[str, Any]) -> None:
    name = pod["metadata"]["name"]
    spec = pod.get("spec") or {}
    if not isinstance(spec, dict):
        raise _Invalid(f"Pod {name}: spec must be a mapping")
    status = dict(pod.get("status") or {})
    ip = status.get("podIP")
    if ip is not None:
        try:
            ipaddress.ip_address(str(ip))
        except ValueError as err:
            raise _Invalid(f"Pod {name}: status.podIP {ip!r} is not an IP address") from err
        # The API server fills podIPs from podIP; readers of either see the same.
        status.setdefault("podIPs", [{"ip": str(ip)}])
        status.setdefault("phase", "Running")
        pod["status"] = status


def implicit_namespace(name: str) -> dict[str, Any]:
    """A Namespace for objects whose namespace no manifest declares (kubectl would refuse them;
    standalone mode is friendlier)."""
    normalized = normalize({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert normalized is not None
    return normalized
