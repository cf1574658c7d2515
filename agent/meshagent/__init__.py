"""meshagent: a sidecarless eBPF L4 networking agent for Kubernetes."""

__version__ = "0.1.0"
