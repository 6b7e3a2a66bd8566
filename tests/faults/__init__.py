"""Fault injection against the real processes: the stack launcher, the harness and its invariant checker."""
