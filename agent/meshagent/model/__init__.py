"""Pure models (no kernel, no Kubernetes client): frozen dataclasses in host byte order."""
