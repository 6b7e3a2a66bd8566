"""Event contracts shared by producers and consumers: a CloudEvents 1.0 envelope around versioned payloads.

Pure data and validation: no I/O, safe to import anywhere (activities, relay, reactors).
"""
