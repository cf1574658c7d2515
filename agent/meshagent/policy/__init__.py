"""Policy engine: identities, NetworkPolicy and admin-rule semantics, compiler to kernel state."""
