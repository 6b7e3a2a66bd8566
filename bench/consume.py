"""Reactor consume benchmark: each reactor on a backlog against raw clients on the same broker and SMTP sink,
then fed one message at a time. Prints figures; asserts nothing.

    python -m bench.consume [--messages 2000] [--one-at-a-time 100] [--only loyalty ...]
        [--env REACTOR_BATCH_SIZE=128 ...] [--smtp-connections N] [--profile DIR] [--json PATH]

On a stack of its own (`bench.e2e.launched_stack`: a fresh database, work counters on; run it under
`flock -s /tmp/broker.lock`), the reactors stopped, `--messages` order.shipped.v1 events are queued; then,
for each reactor in turn (`--only`: these):

1. the raw client, just before and just after the reactor (the box's load drifts; the reactor is compared
   with their mean): for loyalty and analytics, aio-pika alone consuming the same bodies from a quorum queue
   (callback, manual acks, the reactors' prefetch); for notification, aiosmtplib alone sending the same
   mails (composed beforehand with the email package) to the same sink over `smtp_connections` kept-open
   connections (default: as many as the reactor's pool, NOTIFICATION_SMTP_CONNECTIONS);
2. the reactor started alone on the backlog, timed from its first to its last inbox row (notification: to
   the last mail the sink stored). CPU per message is its process's from its first applied message to the
   last (start-up and imports left out); database round trips, transactions and pool checkouts per message
   are its work counters' (`bench.meter`, WORK_COUNTERS_DIR: a pool pre-ping is three round trips), SMTP
   round trips per mail the sink's replies (it offers no pipelining);
3. one at a time (`--one-at-a-time` events, 0: none): each published to the reactor's queue once the last
   one is applied, as at the pipeline's rates; the same work counters per message.

`--profile DIR` runs each reactor under cProfile (`DIR/reactor-<name>.prof`). The reactors are running
again afterwards. `consume_phase(stack, engine, meter, ...)` is what `bench.e2e` runs (without step 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import aio_pika
import aiosmtplib
from aiosmtplib.email import flatten_message
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.meter import Meter, cpu_seconds
from contracts.envelope import STRUCTURED_CONTENT_TYPE, ReceivedEvent, encode_event, new_event
from contracts.orders import ORDER_SHIPPED_V1, OrderLineV1, OrderShippedV1, ShipmentV1
from infra.settings import Settings
from messaging.broker import ConfirmedPublisher, close_quietly, connect
from ops.launcher import MODULES, REACTOR_NAMES, LocalStack
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage
from reactors.notification.reactor import render

Event = tuple[str, bytes]  # (event id, encoded body)
Mail = tuple[str, bytes]  # (recipient, the mail as sent)


def synthetic_shipped_events(count: int, sender: str) -> tuple[list[Event], list[Mail]]:
    """`count` valid order.shipped.v1 events as the relay would publish them, and the notification's mails
    for them from `sender`, composed with the email package as a plain client would."""
    now = datetime.now(UTC)
    events, mails = [], []
    for i in range(count):
        order_id = str(uuid.uuid4())
        line = OrderLineV1(sku="SKU-BENCH", quantity=1, unit_price=1_999, line_total=1_999)
        payload = OrderShippedV1(
            order_id=order_id,
            customer_id=f"cust-{i % 50}",
            customer_email=f"cust-{i % 50}@example.com",
            currency="EUR",
            total_amount=1_999,
            lines=(line,),
            shipment=ShipmentV1(carrier="bench", tracking_number=f"TRK{i}"),
            shipped_at=now,
        )
        event = new_event(
            ORDER_SHIPPED_V1, event_id=str(uuid.uuid4()), subject=order_id, time=now, data=payload
        )
        events.append((event.id, encode_event(event)))
        mail = render(ReceivedEvent(event, payload))
        message = EmailMessage()
        message["From"], message["To"] = sender, mail.recipient
        message["Subject"], message["Message-ID"] = mail.subject, mail.message_id
        message.set_content(mail.body)
        mails.append((mail.recipient, flatten_message(message)))
    return events, mails


async def publish_all(settings: Settings, exchange: str, routing_key: str, events: list[Event]) -> None:
    """Persistent, confirmed publishes, a hundred confirms awaited at a time."""
    connection = await connect(settings, "bench-publish")
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=False) if exchange else channel.default_exchange
        for chunk in range(0, len(events), 100):
            await asyncio.gather(
                *(
                    target.publish(
                        aio_pika.Message(
                            body,
                            message_id=message_id,
                            type=ORDER_SHIPPED_V1.routing_key,
                            content_type=STRUCTURED_CONTENT_TYPE,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=routing_key,
                    )
                    for message_id, body in events[chunk : chunk + 100]
                )
            )
    finally:
        await close_quietly(connection, 10)


async def raw_aio_pika(settings: Settings, queue_name: str, events: list[Event]) -> dict[str, Any]:
    """The same messages from a quorum queue, consumed with aio-pika alone: manual ack, the same prefetch.
    Messages per second (first to last) and the client's CPU ms per message."""
    connection = await connect(settings, "bench-raw")
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.reactor_prefetch)
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 20}
        )
        await publish_all(settings, "", queue_name, events)
        stamps: list[float] = []
        finished = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            stamps.append(time.perf_counter())
            if len(stamps) == len(events):
                finished.set()

        cpu = time.process_time()
        tag = await queue.consume(on_message)
        await asyncio.wait_for(finished.wait(), 300)
        cpu = time.process_time() - cpu
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        return {"per_second": _rate(stamps), "cpu_ms_per_message": cpu * 1000 / len(events)}
    finally:
        await close_quietly(connection, 10)


async def raw_smtp(settings: Settings, mails: list[Mail], connections: int) -> dict[str, Any]:
    """The mails sent to the sink by aiosmtplib alone over `connections` kept-open connections (one mail at a
    time on each): mails per second (first to last) and the client's CPU ms per mail."""
    sender = parseaddr(settings.smtp_sender)[1]
    queue: asyncio.Queue[Mail] = asyncio.Queue()
    for mail in mails:
        queue.put_nowait(mail)
    stamps: list[float] = []

    async def sender_loop() -> None:
        client = aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port, start_tls=False)
        await client.connect()
        try:
            while not queue.empty():
                recipient, mail = queue.get_nowait()
                await client.sendmail(sender, [recipient], mail)
                stamps.append(time.perf_counter())
        finally:
            await client.quit()

    cpu = time.process_time()
    await asyncio.gather(*(sender_loop() for _ in range(connections)))
    cpu = time.process_time() - cpu
    return {
        "per_second": _rate(sorted(stamps)),
        "cpu_ms_per_message": cpu * 1000 / len(mails),
        "connections": connections,
    }


def _rate(stamps: list[float]) -> float:
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    return (len(stamps) - 1) / span if span > 0 else math.nan


def _new_mails(maildir: Path, known: set[str]) -> dict[str, float]:
    """Mail files the sink stored since `known` was taken, with their modification times."""
    found = {}
    for path in (maildir / "new").glob("*"):
        if path.name not in known:
            try:
                found[path.name] = path.stat().st_mtime
            except OSError:
                continue
    return found


async def _applied(engine: AsyncEngine, consumer: str, ids: list[str]) -> tuple[int, Any, Any]:
    """(inbox rows of `ids`, first and last processed_at) of a consumer."""
    async with engine.connect() as connection:
        count, first, last = (
            await connection.execute(
                select(func.count(), func.min(InboxMessage.processed_at), func.max(InboxMessage.processed_at))
                .where(InboxMessage.consumer == consumer)
                .where(InboxMessage.message_id.in_(ids))
            )
        ).one()
    return count, first, last


async def _inbox_span(
    engine: AsyncEngine, consumer: str, ids: list[str], within: float, poll: float = 0.25
) -> tuple[float, float]:
    """Once `consumer` applied all of `ids`: the times of its first and last inbox rows (epoch seconds)."""
    deadline = time.monotonic() + within
    while True:
        applied, first, last = await _applied(engine, consumer, ids)
        if applied >= len(ids):
            return first.timestamp(), last.timestamp()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{consumer}: {applied}/{len(ids)} applied; ledger: {await troubles(engine, consumer)}"
            )
        await asyncio.sleep(poll)


async def troubles(engine: AsyncEngine, consumer: str) -> dict[str, int]:
    """Retries and dead letters of a reactor in the delivery ledger."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(DeliveryRecord.outcome, func.count())
                .where(DeliveryRecord.consumer == consumer)
                .where(
                    DeliveryRecord.outcome.in_(
                        [DeliveryOutcome.RETRY_SCHEDULED, DeliveryOutcome.DEAD_LETTERED]
                    )
                )
                .group_by(DeliveryRecord.outcome)
            )
        ).all()
    return {str(outcome): count for outcome, count in rows}


def _work_per_message(cost: dict[str, Any], name: str) -> dict[str, float]:
    """The reactor's database work per message from a `Meter.cost`, and for notification the sink's SMTP
    replies (round trips) and CPU per mail."""
    work = cost["work"].get(f"reactor-{name}", {})
    figures = {
        f"{key}_per_message": work.get(key, 0.0)
        for key in ("db_round_trips", "db_transactions", "db_checkouts")
    }
    if name == "notification":
        figures["smtp_round_trips_per_message"] = cost["work"].get("smtp", {}).get("smtp_replies", 0.0)
        figures["sink_cpu_ms_per_message"] = cost["cpu_ms"].get("smtp", 0.0)
    return figures


class _ConsumePhase:
    """One run of the module docstring's steps on a launched stack."""

    def __init__(
        self,
        stack: LocalStack,
        engine: AsyncEngine,
        meter: Meter,
        count: int,
        smtp_connections: int,
        within: float,
    ) -> None:
        self.stack, self.engine, self.meter, self.within = stack, engine, meter, within
        self.events, self.mails = synthetic_shipped_events(count, stack.settings.smtp_sender)
        self.ids = [event_id for event_id, _ in self.events]
        self.smtp_connections = smtp_connections

    async def raw(self, name: str) -> dict[str, Any]:
        """The raw client of reactor `name` on the same messages."""
        if name == "notification":
            return await raw_smtp(self.stack.settings, self.mails, self.smtp_connections)
        queue = f"{self.stack.topology.namespace}.rawbench"
        return await raw_aio_pika(self.stack.settings, queue, self.events)

    async def backlog(self, name: str) -> dict[str, Any]:
        """Reactor `name` started on the queued events, until it applied them all (notification: and the
        sink stored all its mails): rate, CPU and work per message."""
        count = len(self.ids)
        known = {path.name for path in (self.stack.maildir / "new").glob("*")}
        before = await self.meter.snapshot()
        component = self.stack.components[f"reactor-{name}"]
        await component.start()
        deadline = time.monotonic() + self.within
        while (applied := (await _applied(self.engine, name, self.ids))[0]) == 0:
            if time.monotonic() > deadline or not component.running:
                raise TimeoutError(f"{name}: nothing applied\n{component.log_tail()}")
            await asyncio.sleep(0.05)
        cpu = cpu_seconds(component.pid, children=True) or 0.0
        first, last = await _inbox_span(self.engine, name, self.ids, self.within)
        per_second = (count - 1) / (last - first) if last > first else math.nan
        if name == "notification":
            while len(mails := _new_mails(self.stack.maildir, known)) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"notification: {len(mails)}/{count} mails stored")
                await asyncio.sleep(0.25)
            per_second = _rate(sorted(mails.values()))
        cpu = (cpu_seconds(component.pid, children=True) or 0.0) - cpu
        cost = Meter.cost(before, await self.meter.snapshot(), count)
        return {
            "per_second": per_second,
            "cpu_ms_per_message": cpu * 1000 / (count - applied) if count > applied else math.nan,
            **_work_per_message(cost, name),
            "troubles": await troubles(self.engine, name),
            "cost_per_message": cost,
        }

    async def one_at_a_time(self, name: str, count: int) -> dict[str, float]:
        """`count` new events published to reactor `name`'s queue, each once the last one is applied: its
        work per message (the reactor is running)."""
        events, _ = synthetic_shipped_events(count, self.stack.settings.smtp_sender)
        publisher = ConfirmedPublisher(self.stack.settings, "bench-one-at-a-time")
        before = await self.meter.snapshot()
        try:
            for message_id, body in events:
                await publisher.publish(
                    exchange="",
                    routing_key=self.stack.topology.queue(name),
                    body=body,
                    message_id=message_id,
                    message_type=ORDER_SHIPPED_V1.routing_key,
                    content_type=STRUCTURED_CONTENT_TYPE,
                )
                await _inbox_span(self.engine, name, [message_id], self.within, poll=0.002)
        finally:
            await publisher.close()
        return _work_per_message(Meter.cost(before, await self.meter.snapshot(), count), name)


async def consume_phase(
    stack: LocalStack,
    engine: AsyncEngine,
    meter: Meter,
    count: int,
    *,
    reactors: tuple[str, ...] = REACTOR_NAMES,
    one_at_a_time: int = 0,
    smtp_connections: int | None = None,
    within: float = 300,
    profile: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """The module docstring's steps for `reactors`, `count` events each; `smtp_connections` None: the
    notification's pool size. Returns {"messages", "smtp_connections", <reactor>: {"per_second",
    "raw_per_second" (mean of "raw": [before, after]), "against", "cpu_ms_per_message",
    "db_round_trips_per_message", ... , "one_at_a_time": {...}}}; rates are per second, CPU in ms."""
    connections = smtp_connections or stack.settings.notification_smtp_connections
    phase = _ConsumePhase(stack, engine, meter, count, connections, within)
    for name in REACTOR_NAMES:
        await stack.components[f"reactor-{name}"].stop()
    await publish_all(stack.settings, stack.topology.exchange, ORDER_SHIPPED_V1.routing_key, phase.events)
    result: dict[str, Any] = {"messages": count, "smtp_connections": connections}
    for name in reactors:
        if profile is not None:
            stack.python_component(
                f"reactor-{name}", "cProfile", "-o", str(profile / f"reactor-{name}.prof"), "-m",
                MODULES["reactor"], name,
            )  # fmt: skip
        raw_before = await phase.raw(name)
        figures = result[name] = await phase.backlog(name)
        raws = [raw_before, await phase.raw(name)]
        figures["raw"] = raws
        figures["raw_per_second"] = sum(raw["per_second"] for raw in raws) / len(raws)
        figures["against"] = "raw aiosmtplib" if name == "notification" else "raw aio-pika"
        if one_at_a_time:
            figures["one_at_a_time"] = await phase.one_at_a_time(name, one_at_a_time)
        if profile is not None:  # its profile written; the plain reactor back in its place
            await stack.components[f"reactor-{name}"].stop()
            stack.service_component(f"reactor-{name}", "reactor", name)
        log(summary_lines({"messages": count, name: figures})[1])
    for name in REACTOR_NAMES:
        if not stack.components[f"reactor-{name}"].running:
            await stack.start_component(f"reactor-{name}")
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A heading, then a line per reactor measured, then one per reactor fed one message at a time."""
    names = [name for name in REACTOR_NAMES if name in result]
    lines = [f"reactor consume, {result['messages']} order.shipped.v1 each:"]
    for name in names:
        f = result[name]
        raw_cpu = sum(raw["cpu_ms_per_message"] for raw in f["raw"]) / len(f["raw"])
        lines.append(
            f"  {name:<13} {f['per_second']:5.0f}/s = {f['per_second'] / f['raw_per_second']:.2f} of"
            f" {f['against']} ({f['raw_per_second']:.0f}/s, mean of just before and after);"
            f" CPU {f['cpu_ms_per_message']:.2f} ms/msg (raw {raw_cpu:.2f});"
            f" DB {f['db_round_trips_per_message']:.2f} round trips,"
            f" {f['db_transactions_per_message']:.3f} transactions per message"
            + (
                f"; SMTP {f['smtp_round_trips_per_message']:.1f} round trips per mail"
                f" ({f['raw'][0]['connections']} raw connections),"
                f" sink CPU {f['sink_cpu_ms_per_message']:.2f} ms/mail"
                if name == "notification"
                else ""
            )
        )
    for name in [name for name in names if "one_at_a_time" in result[name]]:
        f = result[name]["one_at_a_time"]
        lines.append(
            f"  {name:<13} one message at a time: DB {f['db_round_trips_per_message']:.2f} round trips"
            f" ({f['db_checkouts_per_message']:.2f} pool checkouts),"
            f" {f['db_transactions_per_message']:.2f} transactions per message"
            + (
                f"; SMTP {f['smtp_round_trips_per_message']:.1f} round trips per mail"
                if name == "notification"
                else ""
            )
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    from bench.e2e import launched_stack

    parser = argparse.ArgumentParser(
        prog="python -m bench.consume",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=2000, help="the backlog, per reactor")
    parser.add_argument("--one-at-a-time", type=int, default=100, help="then this many, each alone (0: none)")
    parser.add_argument("--only", nargs="+", choices=REACTOR_NAMES, default=REACTOR_NAMES, help="reactors")
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="settings of the stack")
    parser.add_argument("--smtp-connections", type=int, help="raw SMTP client's (default: the pool's)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a reactor after this (s)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="cProfile each reactor into DIR")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures there")
    args = parser.parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    async def run() -> dict[str, Any]:
        env = dict(item.split("=", 1) for item in args.env)
        async with launched_stack(env) as (stack, engine, meter):
            return await consume_phase(
                stack,
                engine,
                meter,
                args.messages,
                reactors=tuple(args.only),
                one_at_a_time=args.one_at_a_time,
                smtp_connections=args.smtp_connections,
                within=args.timeout,
                profile=args.profile and args.profile.resolve(),
            )

    results = asyncio.run(run())
    print("\n".join(summary_lines(results)), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
