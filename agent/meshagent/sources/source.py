"""What every source offers the agent, and how the agent starts one from its command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from meshagent.sources.kube_events import ObjectRef
from meshagent.sources.pipeline import Dispatcher
from meshagent.sources.status import SourceStatus
from meshagent.sources.store import ObjectStore


class Source(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def ready(self) -> bool: ...

    def wait_ready(self, timeout: float) -> bool: ...

    def status(self) -> SourceStatus: ...

    def report_rejected(self, obj_ref: ObjectRef, reason: str, message: str = "") -> None: ...


@dataclass
class DesiredState:
    """A source feeding one store through one dispatcher thread."""

    store: ObjectStore
    dispatcher: Dispatcher
    source: Source

    def start(self) -> None:
        self.dispatcher.start()
        self.source.start()

    def stop(self) -> None:
        self.source.stop()
        self.dispatcher.stop()


def open_desired_state(
    *,
    manifests: Path | str | None = None,
    kubeconfig: str | None = None,
    api_host: str | None = None,
    node: str | None = None,
    poll_interval: float = 0.5,
) -> DesiredState:
    """The directory source when `manifests` is given, else the Kubernetes API (`api_host` URL,
    `kubeconfig`, in-cluster service account, or ~/.kube/config, in that order). Not started."""
    store = ObjectStore()
    dispatcher = Dispatcher(store)
    source: Source
    if manifests is not None:
        from meshagent.sources.directory_source import DirectorySource

        source = DirectorySource(Path(manifests), dispatcher.put, poll_interval=poll_interval)
    else:
        # Imported here so that standalone mode does not pay for loading the client.
        from meshagent.sources.kube_client import load_api_client
        from meshagent.sources.kube_source import KubernetesSource

        api_client = load_api_client(kubeconfig=kubeconfig, host=api_host)
        source = KubernetesSource(api_client, dispatcher.put, node=node)
    return DesiredState(store, dispatcher, source)
