"""Operator tooling: the local stack launcher and the ops CLI."""
