"""Which kernel headers BCC compiles against: the image's bundled set first, then the host's; a compile
that fails with every set names each one and why. The order is pure (no root); the compiles are real."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.datapath import loader
from meshagent.datapath.errors import CompileError
from meshagent.datapath.loader import BCC_SOURCE_ENV, BUNDLED_HEADERS_ENV, compile_bpf, header_sets

# The smallest program that includes a kernel header, as ours do (bpf/ includes only UAPI ones).
PROGRAM = """
#include <uapi/linux/bpf.h>
int ma_headers_probe(struct __sk_buff *skb) { return skb->len > 0; }
"""


def test_bundled_headers_come_first_then_the_hosts() -> None:
    sets = header_sets({BUNDLED_HEADERS_ENV: "/opt/kernel-headers"}, release="6.18.0-test")
    assert [(s.origin, str(s.path), s.source) for s in sets] == [
        ("bundled", "/opt/kernel-headers", "/opt/kernel-headers"),
        # source None: BCC's own lookup, which also finds a `source` link beside `build`.
        ("host", "/lib/modules/6.18.0-test/build", None),
    ]


def test_without_bundled_headers_only_the_hosts_are_tried() -> None:
    sets = header_sets({}, release="6.18.0-test")
    assert [(s.origin, str(s.path)) for s in sets] == [("host", "/lib/modules/6.18.0-test/build")]


def test_an_operators_bcc_kernel_source_is_the_hosts_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "_HOST_SOURCE", "/usr/src/linux-custom")
    sets = header_sets({BUNDLED_HEADERS_ENV: "/opt/kernel-headers"}, release="6.18.0-test")
    assert [(s.origin, s.source) for s in sets] == [
        ("bundled", "/opt/kernel-headers"),
        ("host", "/usr/src/linux-custom"),
    ]


def test_a_set_is_present_only_with_the_file_bcc_checks(tmp_path: Path) -> None:
    tree = loader.HeaderSet("bundled", tmp_path, str(tmp_path))
    assert not tree.present()
    (tmp_path / "include" / "linux").mkdir(parents=True)
    (tmp_path / "include" / "linux" / "kconfig.h").write_text("")
    assert tree.present()
    # Debian's split set under /lib/modules: `build` has no include/linux, `source` beside it has.
    release = tmp_path / "modules" / "6.18.0-test"
    (release / "build").mkdir(parents=True)
    (release / "source" / "include" / "linux").mkdir(parents=True)
    host = loader.HeaderSet("host", release / "build", None)
    assert not host.present()
    (release / "source" / "include" / "linux" / "kconfig.h").write_text("")
    assert host.present()


@pytest.fixture
def bcc_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """compile_bpf leaves the set that worked in BCC_KERNEL_SOURCE: put the test's environment back."""
    saved = os.environ.get(BCC_SOURCE_ENV)
    yield
    if saved is None:
        os.environ.pop(BCC_SOURCE_ENV, None)
    else:
        os.environ[BCC_SOURCE_ENV] = saved


def _host_headers_present() -> bool:
    return loader.HeaderSet("host", Path("/lib/modules") / os.uname().release / "build", None).present()


@pytest.mark.kernel
def test_a_missing_bundled_set_falls_back_to_the_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bcc_environment: None
) -> None:
    if not _host_headers_present():
        pytest.skip("this machine has no host headers (make install links them)")
    monkeypatch.setenv(BUNDLED_HEADERS_ENV, str(tmp_path / "absent"))
    bpf = compile_bpf(PROGRAM, [], entry="probe.c")
    try:
        assert bpf.load_func(b"ma_headers_probe", bpf.SCHED_CLS).fd > 0
        assert BCC_SOURCE_ENV not in os.environ  # the host's set: BCC's own lookup
    finally:
        bpf.cleanup()


@pytest.mark.kernel
def test_a_compile_failing_with_every_set_names_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bcc_environment: None
) -> None:
    # A bundled tree that BCC accepts as one (it has kconfig.h) but that lacks the headers we include.
    broken = tmp_path / "broken"
    (broken / "include" / "linux").mkdir(parents=True)
    (broken / "include" / "linux" / "kconfig.h").write_text("")
    monkeypatch.setenv(BUNDLED_HEADERS_ENV, str(broken))
    monkeypatch.setattr(loader, "_HOST_SOURCE", str(tmp_path / "no-host-headers"))
    with pytest.raises(CompileError) as raised:
        compile_bpf(PROGRAM, [], entry="probe.c")
    message = str(raised.value).splitlines()[0]
    assert message.startswith("compiling probe.c failed; kernel header sets tried: ")
    assert f"bundled headers {broken}: " in message and "file not found" in message
    assert f"host headers {tmp_path / 'no-host-headers'}: not found" in message
    assert f"--- bundled headers {broken}" in raised.value.log  # the compiler's whole output is kept


@pytest.mark.kernel
def test_the_bundled_set_is_used_and_kept_for_later_compiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bcc_environment: None
) -> None:
    """A merged tree (what deploy/kernel-headers.sh makes in the image) built here from the host's split
    set; after it compiled, BCC_KERNEL_SOURCE keeps naming it for the process's other compiles."""
    if not _host_headers_present():
        pytest.skip("this machine has no host headers (make install links them)")
    modules = Path("/lib/modules") / os.uname().release
    merged = tmp_path / f"headers-{uuid.uuid4().hex[:6]}"
    source = modules / "source" if (modules / "source").is_dir() else modules / "build"
    shutil.copytree(source / "include", merged / "include", symlinks=True)
    for tree in ("build", "source"):
        arch = modules / tree / "arch" / "x86"
        if arch.is_dir():
            shutil.copytree(arch, merged / "arch" / "x86", symlinks=True, dirs_exist_ok=True)
    if (modules / "build" / "include").is_dir():
        shutil.copytree(modules / "build" / "include", merged / "include", symlinks=True, dirs_exist_ok=True)
    monkeypatch.setenv(BUNDLED_HEADERS_ENV, str(merged))
    bpf = compile_bpf(PROGRAM, [], entry="probe.c")
    try:
        assert bpf.load_func(b"ma_headers_probe", bpf.SCHED_CLS).fd > 0
        assert os.environ.get(BCC_SOURCE_ENV) == str(merged)
    finally:
        bpf.cleanup()
