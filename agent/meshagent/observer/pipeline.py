"""Datapath events in, flows out: build (with enrichment), count, and append to the ring.

The integrator hands `FlowPipeline.on_event` (or `on_events`) to the datapath's event reader as its
callback, and a `kernel_lost` callable returning the datapath's cumulative lost-event counter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from meshagent.model.events import DatapathEvent
from meshagent.observer.convert import FlowBuilder, PreparedFlow
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.ring import FlowRing

logger = logging.getLogger(__name__)

FlowSink = Callable[[pb.Flow], None]
# Called with the event and its flow *template* (metadata without time/ports/flags): cheap to observe.
EventSink = Callable[[DatapathEvent, pb.Flow], None]
# Called once per batch of prepared flows (the reader's drain): the cheapest way to observe many.
BatchSink = Callable[[Sequence[PreparedFlow]], None]


@dataclass(frozen=True)
class PipelineStats:
    seen_flows: int
    lost_datapath: int  # lost in the kernel buffer before we read them
    lost_queue: int  # dropped between the reader and the ring (reported by the integrator)
    ring_overwritten: int
    uptime_ns: int
    flows_rate: float  # flows/s over the last minute


class _RateWindow:
    """Flows per second over the last `span` seconds, in one-second buckets (cheap on the hot path)."""

    def __init__(self, span: int = 60) -> None:
        self._span = span
        self._buckets = [0] * span
        self._stamp = [0] * span

    def add(self, n: int, now_s: int) -> None:
        i = now_s % self._span
        if self._stamp[i] != now_s:
            self._stamp[i] = now_s
            self._buckets[i] = 0
        self._buckets[i] += n

    def rate(self, now_s: int, started_s: float) -> float:
        total = sum(b for b, s in zip(self._buckets, self._stamp, strict=True) if now_s - s < self._span)
        window = min(self._span, max(1.0, time.monotonic() - started_s))
        return total / window


class FlowPipeline:
    def __init__(
        self,
        *,
        builder: FlowBuilder,
        ring: FlowRing,
        kernel_lost: Callable[[], int] | None = None,
        sinks: Iterable[FlowSink] = (),
    ) -> None:
        self.builder = builder
        self.ring = ring
        self._kernel_lost = kernel_lost
        self._kernel_lost_seen = kernel_lost() if kernel_lost else 0
        self._sinks = list(sinks)
        self._event_sinks: list[EventSink] = []
        self._batch_sinks: list[BatchSink] = []
        self._lock = threading.Lock()
        self._seen = 0
        self._lost_datapath = 0
        self._lost_queue = 0
        self._started = time.monotonic()
        self._started_ns = time.monotonic_ns()
        self._rate = _RateWindow()
        self._lost_listeners: list[Callable[[int, int], None]] = []

    @property
    def node_name(self) -> str:
        return self.builder.node_name

    def add_sink(self, sink: FlowSink) -> None:
        """Called with every flow, built at ingest (costs the message build); prefer add_event_sink."""
        self._sinks.append(sink)

    def add_event_sink(self, sink: EventSink) -> None:
        """Called with (event, flow template) per datapath event (FlowMetrics.observe_event); keep it fast."""
        self._event_sinks.append(sink)

    def add_batch_sink(self, sink: BatchSink) -> None:
        """Called with each batch of prepared flows (FlowMetrics.observe_prepared)."""
        self._batch_sinks.append(sink)

    def add_lost_listener(self, listener: Callable[[int, int], None]) -> None:
        """Called with (LostEventSource, count) whenever losses are recorded."""
        self._lost_listeners.append(listener)

    def on_event(self, ev: DatapathEvent) -> None:
        self.on_events((ev,))

    def on_events(self, events: Sequence[DatapathEvent]) -> None:
        batch = self.builder.prepare_many(events)
        self.ring.push_many(batch)
        for bsink in self._batch_sinks:
            bsink(batch)
        for sink in self._sinks:
            for p in batch:
                sink(p.message())
        for esink in self._event_sinks:
            for p in batch:
                esink(p.event, p.template)
        self._count(len(batch))

    def _count(self, n: int) -> None:
        with self._lock:
            self._seen += n
            self._rate.add(n, int(time.monotonic()))

    def check_kernel_lost(self) -> int:
        """Polls the datapath's lost counter; new losses become a LostEvent in the ring. Returns the delta."""
        if self._kernel_lost is None:
            return 0
        total = self._kernel_lost()
        delta = total - self._kernel_lost_seen
        if delta < 0:  # the datapath was reloaded and its counter restarted
            delta = total
        self._kernel_lost_seen = total
        if delta:
            self.record_lost(pb.PERF_EVENT_RING_BUFFER, delta)
        return delta

    def record_lost(self, source: int, count: int) -> None:
        """Record `count` events lost at `source` (a flow.LostEventSource); followers see it in order."""
        if count <= 0:
            return
        with self._lock:
            if source == pb.PERF_EVENT_RING_BUFFER:
                self._lost_datapath += count
            else:
                self._lost_queue += count
        now_ns = time.time_ns()
        lost = pb.LostEvent(source=source, num_events_lost=count)  # type: ignore[arg-type]
        lost.last.FromNanoseconds(now_ns)
        self.ring.push_lost(now_ns, lost)
        for listener in self._lost_listeners:
            listener(source, count)
        logger.debug("recorded %d lost events from source %d", count, source)

    def stats(self) -> PipelineStats:
        with self._lock:
            return PipelineStats(
                seen_flows=self._seen,
                lost_datapath=self._lost_datapath,
                lost_queue=self._lost_queue,
                ring_overwritten=self.ring.overwritten,
                uptime_ns=time.monotonic_ns() - self._started_ns,
                flows_rate=self._rate.rate(int(time.monotonic()), self._started),
            )


class LossPoller:
    """Polls `FlowPipeline.check_kernel_lost` on its own thread every `interval_s` seconds."""

    def __init__(self, pipeline: FlowPipeline, *, interval_s: float = 1.0) -> None:
        self._pipeline = pipeline
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flow-loss-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._pipeline.check_kernel_lost()
            except Exception:  # the counter source is the integrator's; keep polling
                logger.exception("reading the datapath lost-event counter failed")
