"""The reactor runtime: one per reactor, owning every transport concern so that handlers stay plain.

Modules, by responsibility:

- `transport`: the consuming connection (declare, consume, notice a lost link or a broker cancellation)
  and the intake a batch is taken from;
- `persistence`: the inbox and ledger rows, written in the transaction of the reactor's effects;
- `policy`: retry through wait queues, dead-lettering, attempt counting;
- `handling`: one batch (a lone message is a batch of one) from parsing to acking;
- `observe`: spans and metrics of each message;
- `loop`: `ReactorRuntime`, tying them together (reconnect, recover, shut down).

Guarantees (see README, "Reactor runtime"): effects at most once per event id (inbox row in the same
transaction) and at least once (manual acks after commit; redelivery); a failing batch is handled again
message by message so only the failing message is retried; permanent errors go to the DLQ at once; the
broker dead-letters a message that kills its consumer `x-delivery-limit` times.
"""

from __future__ import annotations

from reactors.runtime.handling import Fault
from reactors.runtime.loop import ReactorRuntime
from reactors.runtime.transport import TopologyRefused

__all__ = ["Fault", "ReactorRuntime", "TopologyRefused"]
