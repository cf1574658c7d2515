"""`meshagent demo --nodes 2`: the shop spread over two nodes, one agent each and the relay before them;
the demo checks its own calls and verdicts and exits 1 when they are not as its policies say."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kernel


def test_demo_on_two_nodes_runs_as_expected_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshagent.cli.main", "demo", "--nodes", "2", "--duration", "10"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "as expected" in out
    assert "relay ready" in out
    # The service map was started beside them, reading the relay.
    shown = r"service map \(meshagent ui\): http://127\.0\.0\.1:\d+/ \(flows from unix://.*relay\.sock\)"
    assert re.search(shown, out), out[:3000]
    # Flows of both nodes came through the one relay stream.
    assert "[demo-node-1]" in out and "[demo-node-2]" in out
    # Its node namespaces (named in its output) and the namespaces named after them are gone.
    prefixes = {word.split("n0-node")[0] for word in re.findall(r"mademo\d+n0-node", out)}
    assert prefixes, out[:2000]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [line for line in left.splitlines() if any(line.startswith(p) for p in prefixes)]
    # Its working directory (manifests, logs, the relay's socket), named in the relay's address, is gone.
    workdirs = set(re.findall(r"unix://(/\S*meshagent-demo-[^/\s]+)/relay\.sock", out))
    assert workdirs, out[:3000]
    assert not [path for path in workdirs if os.path.exists(path)]
