"""Choreographed side effects: reactors consume the order events from RabbitMQ, each exactly once in effect.

A reactor is a name, the routing keys it wants, and plain handler functions (see `reactors.base`); the
runtime (`reactors.runtime`) owns every transport concern. Register new reactors in `reactors.registry`.
"""
