"""`meshagent relay`: one Observer API for the flows of every node (Hubble-relay compatible)."""
