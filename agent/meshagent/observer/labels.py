"""Kubernetes-style label selectors over Hubble label strings ("k8s:app=web", "reserved:world")."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_KEY_RE = re.compile(r"^[A-Za-z0-9_.:/\-]+$")
_VALUE_RE = re.compile(r"^[A-Za-z0-9_.\-]*$")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class _Label:
    source: str  # "k8s", "reserved", ... or "" when the label carries none
    key: str
    value: str


def parse_label(text: str) -> _Label:
    key, _, value = text.partition("=")
    source = ""
    if ":" in key:
        source, _, key = key.partition(":")
    return _Label(source, key, value)


LabelPredicate = Callable[[Iterable[str]], bool]


def _split_terms(selector: str) -> list[str]:
    terms: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in label selector {selector!r}")
        if ch == "," and depth == 0:
            terms.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise SelectorError(f"unbalanced '(' in label selector {selector!r}")
    terms.append("".join(cur).strip())
    if any(not t for t in terms):
        raise SelectorError(f"empty term in label selector {selector!r}")
    return terms


def _key_matcher(key: str) -> Callable[[_Label], bool]:
    if not _KEY_RE.match(key):
        raise SelectorError(f"bad label key {key!r}")
    if ":" in key:
        src, _, k = key.partition(":")
        if src == "any":
            return lambda lbl: lbl.key == k
        return lambda lbl: lbl.source == src and lbl.key == k
    return lambda lbl: lbl.key == key


_Check = Callable[[list[_Label]], bool]


def _value_check(km: Callable[[_Label], bool], values: frozenset[str], *, negate: bool) -> _Check:
    def check(labels: list[_Label]) -> bool:
        hit = any(km(lb) and lb.value in values for lb in labels)
        return hit != negate

    return check


def _exists_check(km: Callable[[_Label], bool], *, negate: bool) -> _Check:
    def check(labels: list[_Label]) -> bool:
        return any(km(lb) for lb in labels) != negate

    return check


_SET_RE = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)$")


def compile_selector(selector: str) -> LabelPredicate:
    """A predicate over a flow endpoint's labels; raises SelectorError on a malformed selector."""
    checks: list[_Check] = []
    for term in _split_terms(selector.strip()):
        m = _SET_RE.match(term)
        if m:
            values = frozenset(v.strip() for v in m["values"].split(","))
            if not values or any(not _VALUE_RE.match(v) for v in values):
                raise SelectorError(f"bad value list in {term!r}")
            checks.append(_value_check(_key_matcher(m["key"]), values, negate=m["op"] == "notin"))
            continue
        for op in ("!=", "==", "="):
            if op in term:
                key, _, value = term.partition(op)
                key, value = key.strip(), value.strip()
                if not _VALUE_RE.match(value):
                    raise SelectorError(f"bad label value in {term!r}")
                checks.append(_value_check(_key_matcher(key), frozenset({value}), negate=op == "!="))
                break
        else:
            negate = term.startswith("!")
            checks.append(_exists_check(_key_matcher(term.lstrip("!").strip()), negate=negate))

    def predicate(labels: Iterable[str]) -> bool:
        parsed = [parse_label(t) for t in labels]
        return all(c(parsed) for c in checks)

    return predicate
