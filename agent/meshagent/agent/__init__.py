"""The agent: wires a source of desired state, the policy compiler, the datapath and the flow observer."""
