"""The HTTP API (FastAPI): place, follow and cancel orders; manage products (`python -m entrypoints.api`)."""
