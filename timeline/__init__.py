"""The per-order timeline: what happened to order X, merged from the saga's Temporal history, the outbox
and every reactor's delivery ledger."""
