"""`meshagent flows`: observe flows like `hubble observe` (live from the observer API, or replayed)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import click
import grpc

from meshagent.cli.aggregate import AggregateError, Aggregator, parse_keys
from meshagent.cli.connection import client_from_options, connection_options
from meshagent.cli.filterflags import (
    FilterItem,
    FilterOrderCommand,
    FlagError,
    build_filters,
    filter_items,
    filter_options,
)
from meshagent.cli.printer import OUTPUT_MODES, FlowPrinter, print_aggregate
from meshagent.cli.replay import ReplayError, load_ring
from meshagent.cli.timeparse import TimeParseError, parse_time_ns
from meshagent.observer.client import ClientError, ObserverClient
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.query import InvalidRequest, LostNotice, parse_request, run_query

DEFAULT_LAST = 20  # as hubble observe, when neither a count nor a time window is given


@click.command(
    "flows", cls=FilterOrderCommand, help="Observe flows (like hubble observe).", no_args_is_help=False
)
@click.option(
    "--last", type=click.IntRange(min=1), metavar="N", help=f"the last N flows (default {DEFAULT_LAST})"
)
@click.option("--first", type=click.IntRange(min=1), metavar="N", help="the first N flows held")
@click.option("--all", "all_flows", is_flag=True, help="every flow held")
@click.option("-f", "--follow", is_flag=True, help="keep streaming new flows")
@click.option("--since", help="from this time: 5m, 1h30m or RFC 3339")
@click.option("--until", help="until this time: 5m, 1h30m or RFC 3339")
@filter_options
@click.option("-o", "--output", type=click.Choice(OUTPUT_MODES), default="compact", show_default=True)
@click.option("--color", type=click.Choice(("auto", "always", "never")), default="auto", show_default=True)
@click.option("--print-policy-names", is_flag=True, help="show the policies that decided")
@click.option("--print-node-name", is_flag=True, help="show the node of each flow")
@click.option("--aggregate-by", metavar="KEYS", help="count flows by keys, e.g. src,dst,port,verdict")
@click.option(
    "--aggregate-window",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    metavar="S",
    help="with --follow: print counts every S seconds",
)
@click.option("--input-file", metavar="FILE", help="replay saved JSON flows ('-' for stdin)")
@connection_options
@click.pass_context
def flows_command(ctx: click.Context, **params: Any) -> int:
    try:
        request = build_request(params, filter_items(ctx, params), now_ns=time.time_ns())
    except (FlagError, TimeParseError) as err:
        raise click.UsageError(str(err), ctx) from err
    return show_flows(params, request)


def build_request(
    params: Mapping[str, Any], filters: list[FilterItem], *, now_ns: int
) -> opb.GetFlowsRequest:
    """The GetFlows request that `params` (the flows command's options) and the filter flags ask for."""
    last, first, every = params.get("last"), params.get("first"), params.get("all_flows")
    follow, since, until = params.get("follow"), params.get("since"), params.get("until")
    if sum((last is not None, first is not None, bool(every))) > 1:
        raise FlagError("--last, --first and --all exclude each other")
    req = opb.GetFlowsRequest(follow=bool(follow))
    whitelist, blacklist = build_filters(filters)
    req.whitelist.extend(whitelist)
    req.blacklist.extend(blacklist)
    if since:
        req.since.FromNanoseconds(parse_time_ns(since, now_ns=now_ns))
    if until:
        req.until.FromNanoseconds(parse_time_ns(until, now_ns=now_ns))
    if first is not None:
        req.first, req.number = True, first
    elif last is not None:
        req.number = last
    elif every:
        req.number = (1 << 64) - 1  # what hubble sends for --all
    elif not follow and not since and not until:
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


def show_flows(params: Mapping[str, Any], req: opb.GetFlowsRequest) -> int:
    """Fetches (or replays) the flows of `req` and prints them; the exit status."""
    try:
        keys = parse_keys(params["aggregate_by"]) if params["aggregate_by"] else None
        client: ObserverClient | None = None
        if params["input_file"]:
            parse_request(req)  # validate locally, with the server's own rules
            responses = _replay(params["input_file"], req)
        else:
            client = client_from_options(params)
            responses = client.get_flows(req)
        colour = params["color"] == "always" or (params["color"] == "auto" and sys.stdout.isatty())
        printer = FlowPrinter(
            sys.stdout,
            mode=params["output"],
            colour=colour,
            policy_names=params["print_policy_names"],
            node_names=params["print_node_name"],
        )
        try:
            if keys:
                _aggregate(responses, keys, follow=req.follow, window_s=params["aggregate_window"])
            else:
                for resp in responses:
                    printer.response(resp)
        finally:
            if client is not None:
                client.close()
    except (FlagError, AggregateError, InvalidRequest, ReplayError, ClientError) as err:
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
