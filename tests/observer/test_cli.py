"""`meshagent flows` and `meshagent status` against a real server on a Unix socket, every output mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from meshagent.cli.main import main

from tests.observer import helpers as h


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def flows_cmd(served: h.Served, *extra: str) -> list[str]:
    return ["flows", "--server", str(served.socket), *extra]


def test_compact_default_last_20_with_policy_names(
    served: h.Served, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(capsys, *flows_cmd(served, "--print-policy-names"))
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 10
    assert "shop/client-7d9f:40000 (ID:1001) -> shop/server-5c4b:80 (ID:1002)" in lines[0]
    assert "FORWARDED (TCP Flags: SYN)" in lines[0]
    assert "[egress allowed by NetworkPolicy:shop/allow-web]" in lines[0]
    assert "POLICY_DENY DROPPED" in lines[3]
    assert "egress denied by AdminNetworkPolicy:deny-db" in lines[3]
    assert "203.0.113.7:40000 (world) -> shop/server-5c4b:22" in lines[4]
    assert "\033[" not in out  # not a terminal: no colour


def test_colour_always(served: h.Served, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, *flows_cmd(served, "--last", "1", "--verdict", "DROPPED", "--color", "always"))
    assert "\033[31mDROPPED\033[0m" in out


def test_json_modes_parse(served: h.Served, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, *flows_cmd(served, "-o", "json", "--last", "2"))
    objs = [json.loads(line) for line in out.splitlines()]
    assert [o["l4"].keys() for o in objs] and objs[-1]["l4"]["SCTP"]["destinationPort"] == 3868
    _, out, _ = run(capsys, *flows_cmd(served, "-o", "jsonpb", "--last", "2"))
    objs = [json.loads(line) for line in out.splitlines()]
    assert all(o["nodeName"] == "node-a" and "flow" in o and "time" in o for o in objs)


def test_dict_and_table(served: h.Served, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, *flows_cmd(served, "-o", "dict", "--last", "2"))
    assert out.count("------------") == 1
    assert "  VERDICT: FORWARDED" in out and "DESTINATION:" in out
    _, out, _ = run(capsys, *flows_cmd(served, "-o", "table", "--type", "drop"))
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT"]
    assert len(lines) == 3 and all("DROPPED" in line for line in lines[1:])


@pytest.mark.parametrize(
    ("flags", "count"),
    [
        (["--from-pod", "shop/server"], 1),
        (["--pod", "shop/server"], 5),  # either side
        (["-n", "data"], 2),
        (["--to-ip", "10.0.3.30"], 2),
        (["--ip", "203.0.113.0/24"], 2),
        (["--port", "5432"], 2),
        (["--protocol", "udp"], 1),
        (["--label", "app=db"], 2),
        (["--identity", "2"], 4),
        (["--service", "shop/web"], 1),
        (["--type", "policy-verdict"], 7),
        (["--type", "trace"], 1),
        (["--verdict", "AUDIT"], 1),
        (["--node-name", "node-a"], 10),
        (["--not", "--verdict", "FORWARDED"], 3),
        (["--from-pod", "shop/client", "--not", "--protocol", "tcp"], 3),
        # --not negates the flag after it, wherever it stands: here TCP flows not from the client
        (["--not", "--from-pod", "shop/client", "--protocol", "tcp"], 2),
        (["--traffic-direction", "ingress"], 2),
    ],
)
def test_filter_flags(
    served: h.Served, capsys: pytest.CaptureFixture[str], flags: list[str], count: int
) -> None:
    rc, out, err = run(capsys, *flows_cmd(served, "-o", "json", *flags))
    assert rc == 0, err
    assert len(out.splitlines()) == count, out


def test_options_from_the_environment(
    served: h.Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHAGENT_SERVER", str(served.socket))  # a connection flag, shared with status
    monkeypatch.setenv("MESHAGENT_FLOWS_OUTPUT", "json")  # any other option: by command and name
    rc, out, err = run(capsys, "flows", "--last", "2")
    assert rc == 0, err
    assert [json.loads(line)["verdict"] for line in out.splitlines()] == ["FORWARDED", "FORWARDED"]
    rc, out, _ = run(capsys, "flows", "--last", "1", "-o", "compact")  # a flag wins over the environment
    assert rc == 0 and not out.startswith("{")
    monkeypatch.setenv("MESHAGENT_FLOWS_OUTPUT", "yaml")
    rc, _, err = run(capsys, "flows")
    assert rc == 2 and "'yaml' is not one of" in err


def test_first_since_until(served: h.Served, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, *flows_cmd(served, "-o", "json", "--first", "1"))
    assert json.loads(out)["trafficDirection"] == "EGRESS"
    _, out, _ = run(capsys, *flows_cmd(served, "-o", "json", "--since", "1h"))
    assert len(out.splitlines()) == 10
    _, out, _ = run(capsys, *flows_cmd(served, "-o", "json", "--until", "2000-01-01T00:00:00Z"))
    assert out == ""


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--since", "yesterday"], "neither a duration"),
        (["--first", "3", "--last", "3"], "exclude each other"),
        (["--first", "3", "-f"], "first"),
        (["--from-ip", "10.0.0.999"], "source_ip"),
        (["--verdict", "MAYBE"], "'MAYBE' is not one of"),
        (["--aggregate-by", "colour"], "aggregate keys"),
    ],
)
def test_bad_flags_are_clear_errors(
    served: h.Served, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    rc, _, err = run(capsys, *flows_cmd(served, *flags))
    assert rc in (1, 2)
    assert message in err


def test_aggregate_by(served: h.Served, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, *flows_cmd(served, "--all", "--aggregate-by", "src,verdict"))
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SRC", "VERDICT", "FLOWS"]
    assert lines[1].split() == ["shop/client-7d9f", "FORWARDED", "6"]
    assert sum(int(line.split()[-1]) for line in lines[1:]) == 10


def test_replay_from_file_with_filters(
    served: h.Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, saved, _ = run(capsys, *flows_cmd(served, "-o", "jsonpb", "--all"))
    path = tmp_path / "flows.json"
    path.write_text(saved)
    rc, out, err = run(capsys, "flows", "--input-file", str(path), "-o", "json", "--verdict", "DROPPED")
    assert rc == 0, err
    assert len(out.splitlines()) == 2
    _, live, _ = run(capsys, *flows_cmd(served, "-o", "json", "--verdict", "DROPPED"))
    assert out == live  # replay gives exactly what the server gives for the same filters
    # bare Flow JSON (-o json) replays too; --last applies
    (tmp_path / "bare.json").write_text(live)
    _, out, _ = run(capsys, "flows", "--input-file", str(tmp_path / "bare.json"), "--last", "1", "-o", "json")
    assert out == live.splitlines(keepends=True)[-1]


def test_replay_rejects_garbage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"flow": {"verdict": "FORWARDED"}}\nnot json\n')
    rc, _, err = run(capsys, "flows", "--input-file", str(bad))
    assert rc == 2
    assert "line 2" in err


def test_status(served: h.Served, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "status", "--server", str(served.socket))
    assert rc == 0
    assert "Flows held:" in out and "10/4096" in out
    assert "Flows seen:" in out and "node-a" in out
    assert "datapath 0" in out


def test_unreachable_server_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, "flows", "--server", str(tmp_path / "nothing.sock"), "--timeout", "1")
    assert rc == 1
    assert "UNAVAILABLE" in err or "DEADLINE" in err


def test_follow_until_rfc3339_ends(served: h.Served, capsys: pytest.CaptureFixture[str]) -> None:
    import datetime as dt
    import threading

    until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3)).isoformat()  # noqa: UP017
    stop = threading.Event()

    def keep_sending() -> None:
        # New flows every 0.2 s, so that one arrives after the follower is connected even on a loaded machine.
        while not stop.wait(0.2):
            served.pipeline.on_event(h.event(dport=7777))

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        rc, out, _ = run(capsys, *flows_cmd(served, "-f", "--until", until, "-o", "json"))
    finally:
        stop.set()
        sender.join()
    assert rc == 0
    ports = [json.loads(line)["l4"]["TCP"]["destinationPort"] for line in out.splitlines()]
    # Follow without a count streams only new flows (none of the 10 held before), until the deadline.
    assert ports and set(ports) == {7777}


def test_aggregate_windows_when_following(capsys: pytest.CaptureFixture[str]) -> None:
    from meshagent.cli.flows import _aggregate
    from meshagent.observer.proto.observer import observer_pb2 as opb

    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    responses = [opb.GetFlowsResponse(flow=e.flow) for e in pipeline.ring.snapshot() if e.flow is not None]
    _aggregate(iter(responses), ["verdict"], follow=True, window_s=0.0)
    out = capsys.readouterr().out
    assert out.count("VERDICT") >= 2  # one table per window
    assert "FORWARDED" in out
