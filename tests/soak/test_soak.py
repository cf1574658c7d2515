"""The chaos soak, shortened (`make soak` runs it for 10 minutes): churn, SIGKILL restarts, API outages
with compacted history, and the kernel checked against the policy evaluator with real packets after every
change."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.soak.driver import Soak, report

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

SECONDS = 75.0


def test_short_chaos_soak(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    figures = Soak(seconds=SECONDS, seed=seed, workdir=tmp_path, disruption_every_s=15.0).run()
    lines = report(figures, seconds=SECONDS, seed=seed)
    print("\n".join(lines))
    log = (tmp_path / "agent.log").read_text()[-3000:]
    assert figures.changes >= 5, lines
    assert (
        figures.restarts >= 1
        or figures.actions.get("restart", 0) + figures.actions.get("restart_mid_change", 0) == 0
    )
    assert figures.wrong_after_convergence == 0, (lines, log)
    assert figures.broken_by_restart == 0, (lines, log)
    assert figures.unexpected_exits == 0, (lines, log)
