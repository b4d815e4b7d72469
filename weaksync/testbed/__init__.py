"""The network-namespace testbed: one veth-linked namespace per host, real bandwidth limits (tc), a run across them."""
