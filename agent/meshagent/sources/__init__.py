"""Sources of desired state: the Kubernetes API and a directory of manifests, one event stream."""
