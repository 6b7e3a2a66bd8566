"""The order domain: pure rules and types, free of infrastructure (no I/O, safe inside workflow code)."""
