"""Kernel capability probes (meshagent.datapath.probes): what they report, and that gaps carry a reason."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from meshagent.datapath import probes


def test_explain_tells_privilege_from_missing_feature() -> None:
    denied = probes._explain(OSError(errno.EPERM, "x"), "cannot create a lpm_trie map")
    assert "not permitted" in denied
    assert "root" in denied
    missing = probes._explain(OSError(errno.EINVAL, "x"), "cannot create a ring_buffer map")
    assert "not supported by kernel" in missing
    assert os.uname().release in missing


def test_explain_keeps_the_verifier_words() -> None:
    err = probes._BpfSyscallError(errno.EACCES + 1000, "program type 3", "R0 !read_ok\n")
    text = probes._explain(err, "cannot load a sched_cls program")
    assert "R0 !read_ok" in text


def test_every_feature_has_a_probe() -> None:
    assert set(probes.PROBES) == set(probes.Feature)


@pytest.mark.kernel
def test_probe_all_reports_each_feature_with_a_reason_when_missing() -> None:
    results = probes.probe_all()
    assert list(results) == list(probes.Feature)
    for feature, result in results.items():
        assert result.feature is feature
        assert bool(result) is result.available
        # Available means no reason; unavailable always says why.
        assert (result.reason == "") is result.available, result


@pytest.mark.kernel
def test_unknown_map_type_is_reported_as_unsupported() -> None:
    result = probes._probe_map(probes.Feature.LPM_TRIE, 4000, key_size=4, value_size=4, max_entries=1)
    assert not result.available
    assert "not supported by kernel" in result.reason


@pytest.mark.kernel
def test_unprivileged_process_gets_permission_reason() -> None:
    # An LPM trie needs CAP_BPF: in a child that dropped to `nobody` the probe must say "not permitted",
    # not "not supported", so an operator fixes privileges rather than the kernel.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            result = probes.probe_lpm_trie()
            os.write(write_end, f"{result.available}|{result.reason}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        reply = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    available, reason = reply.split("|", 1)
    assert available == "False"
    assert "not permitted" in reason


@pytest.mark.kernel
def test_tc_probe_reports_a_failed_attach() -> None:
    # An array map's fd is not a program: the kernel refuses the cls_bpf filter, and the probe says so.
    fd = probes._create_map(probes._MAP_ARRAY, key_size=4, value_size=4, max_entries=1)
    try:
        reason = probes._run_tc_probe(fd)
    finally:
        os.close(fd)
    assert reason.startswith("cls_bpf direct-action filter unavailable"), reason


@pytest.mark.kernel
def test_tc_probe_leaves_nothing_behind() -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    result = probes.probe_clsact_cls_bpf()
    assert result.available, result.reason
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True, check=True)
    assert "clsact" not in qdiscs.stdout


@pytest.mark.kernel
def test_missing_joins_the_reasons_of_unavailable_features() -> None:
    assert probes.missing(probes.Feature.SCHED_CLS) == ""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, probes.missing(probes.Feature.LPM_TRIE, probes.Feature.SOCKHASH).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        reply = reader.read().decode()
    os.waitpid(pid, 0)
    assert "lpm_trie" in reply
    assert "sockhash" in reply
    assert reply.count("run as root") == 2
