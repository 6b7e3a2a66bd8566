"""Saga steps as Temporal activities: classes that receive their dependencies, each step idempotent."""
