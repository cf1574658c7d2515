"""Services for the socket load-balancer: parse Kubernetes objects, compile them to frontends, diff."""
