"""The top layer: the composition root (`bootstrap`) and one module per process, each with its `main()`:
`api`, `worker`, `relay`, `reactors`, `smtp_sink` and `cli` (the `order-saga` operator CLI).
Run one with `python -m entrypoints.<name>`."""
