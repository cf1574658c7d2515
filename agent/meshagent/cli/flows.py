"""`meshagent flows`: observe flows like `hubble observe` (live from the observer API, or replayed)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from meshagent.observer.aggregate import AggregateError, Aggregator, parse_keys
from meshagent.observer.client import ClientError, ClientTls, ObserverClient
from meshagent.observer.cliflags import FlagError, add_filter_flags, build_filters
from meshagent.observer.printer import OUTPUT_MODES, FlowPrinter, print_aggregate
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.query import InvalidRequest, LostNotice, parse_request, run_query
from meshagent.observer.replay import ReplayError, load_ring
from meshagent.observer.timeparse import TimeParseError, parse_time_ns

logger = logging.getLogger(__name__)

DEFAULT_LAST = 20  # as hubble observe, when neither a count nor a time window is given


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument(
        "--server", help="observer address: socket path, unix:///path or host:port (default: local)"
    )
    g.add_argument("--tls-ca", type=Path, help="CA bundle to verify the server (enables TLS)")
    g.add_argument("--tls-cert", type=Path, help="client certificate (when the server verifies clients)")
    g.add_argument("--tls-key", type=Path, help="client private key")
    g.add_argument("--tls-server-name", help="name to verify in the server certificate")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds for non-follow requests")


def client_from_args(args: argparse.Namespace) -> ObserverClient:
    tls = None
    if args.tls_ca:
        tls = ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    return ObserverClient(args.server, tls=tls, timeout_s=args.timeout)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("flows", help="observe flows (like hubble observe)")
    sel = p.add_argument_group("selection")
    sel.add_argument("--last", type=int, metavar="N", help=f"the last N flows (default {DEFAULT_LAST})")
    sel.add_argument("--first", type=int, metavar="N", help="the first N flows held")
    sel.add_argument("--all", action="store_true", help="every flow held")
    sel.add_argument("-f", "--follow", action="store_true", help="keep streaming new flows")
    sel.add_argument("--since", help="from this time: 5m, 1h30m or RFC 3339")
    sel.add_argument("--until", help="until this time: 5m, 1h30m or RFC 3339")
    add_filter_flags(p)
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", choices=OUTPUT_MODES, default="compact")
    out.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    out.add_argument("--print-policy-names", action="store_true", help="show the policies that decided")
    out.add_argument("--print-node-name", action="store_true")
    out.add_argument("--aggregate-by", metavar="KEYS", help="count flows by keys, e.g. src,dst,port,verdict")
    out.add_argument(
        "--aggregate-window",
        type=float,
        default=5.0,
        metavar="S",
        help="with --follow: print counts every S seconds",
    )
    p.add_argument("--input-file", metavar="FILE", help="replay saved JSON flows ('-' for stdin)")
    add_connection_flags(p)
    p.set_defaults(handler=run)


def build_request(args: argparse.Namespace, *, now_ns: int) -> opb.GetFlowsRequest:
    counts = [x for x in (args.last is not None, args.first is not None, args.all) if x]
    if len(counts) > 1:
        raise FlagError("--last, --first and --all exclude each other")
    for name in ("last", "first"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise FlagError(f"--{name} needs a positive number")
    req = opb.GetFlowsRequest(follow=args.follow)
    whitelist, blacklist = build_filters(getattr(args, "filter_items", None) or [])
    req.whitelist.extend(whitelist)
    req.blacklist.extend(blacklist)
    if args.since:
        req.since.FromNanoseconds(parse_time_ns(args.since, now_ns=now_ns))
    if args.until:
        req.until.FromNanoseconds(parse_time_ns(args.until, now_ns=now_ns))
    if args.first is not None:
        req.first, req.number = True, args.first
    elif args.last is not None:
        req.number = args.last
    elif args.all:
        req.number = (1 << 64) - 1  # what hubble sends for --all
    elif not args.follow and not args.since and not args.until:
        req.number = DEFAULT_LAST
    return req


def _replay(path: str, req: opb.GetFlowsRequest) -> Iterator[opb.GetFlowsResponse]:
    if req.follow:
        raise FlagError("--follow cannot be used with --input-file")
    with open(0 if path == "-" else path, encoding="utf-8", closefd=path != "-") as fh:
        ring = load_ring(fh)
    query = parse_request(req)
    for item in run_query(ring, query, active=lambda: True, now_ns=time.time_ns):
        if isinstance(item, LostNotice):
            yield opb.GetFlowsResponse(
                lost_events=pb.LostEvent(source=pb.HUBBLE_RING_BUFFER, num_events_lost=item.count)
            )
        elif item.flow is not None:
            yield opb.GetFlowsResponse(flow=item.flow, node_name=item.flow.node_name, time=item.flow.time)
        elif item.lost is not None:
            yield opb.GetFlowsResponse(lost_events=item.lost)


def run(args: argparse.Namespace) -> int:
    try:
        req = build_request(args, now_ns=time.time_ns())
        keys = parse_keys(args.aggregate_by) if args.aggregate_by else None
        client: ObserverClient | None = None
        if args.input_file:
            parse_request(req)  # validate locally, with the server's own rules
            responses = _replay(args.input_file, req)
        else:
            client = client_from_args(args)
            responses = client.get_flows(req)
        colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
        printer = FlowPrinter(
            sys.stdout,
            mode=args.output,
            colour=colour,
            policy_names=args.print_policy_names,
            node_names=args.print_node_name,
        )
        try:
            if keys:
                _aggregate(responses, keys, follow=args.follow, window_s=args.aggregate_window)
            else:
                for resp in responses:
                    printer.response(resp)
        finally:
            if client is not None:
                client.close()
    except (FlagError, TimeParseError, AggregateError, InvalidRequest, ReplayError, ClientError) as err:
        print(f"meshagent flows: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"meshagent flows: {err}", file=sys.stderr)
        return 1
    except grpc.RpcError as err:
        print(f"meshagent flows: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def _aggregate(
    responses: Iterator[opb.GetFlowsResponse], keys: list[str], *, follow: bool, window_s: float
) -> None:
    agg = Aggregator(keys)
    next_print = time.monotonic() + window_s
    lost = 0
    for resp in responses:
        if resp.HasField("flow"):
            agg.add(resp.flow)
        elif resp.HasField("lost_events"):
            lost += resp.lost_events.num_events_lost
        if follow and time.monotonic() >= next_print:
            _print_window(agg, keys, lost)
            agg.reset()
            lost = 0
            next_print = time.monotonic() + window_s
    _print_window(agg, keys, lost)


def _print_window(agg: Aggregator, keys: list[str], lost: int) -> None:
    print_aggregate(sys.stdout, agg.rows(), keys)
    if lost:
        sys.stdout.write(f"(and {lost} event(s) lost)\n")
