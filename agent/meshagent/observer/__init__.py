"""Flow observability: flows from datapath events, a Hubble-compatible gRPC API, metrics."""
