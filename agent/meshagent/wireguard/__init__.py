"""Transparent node-to-node encryption with WireGuard: keys, peers and modes, free of kernel access.

The device itself is driven by meshagent.datapath.wireguard; the agent glues both in
meshagent.agent.encryption.
"""
