"""Reactor consume rates against raw clients, on the same broker and the same SMTP sink:

- loyalty and analytics: N `order.shipped.v1` events queued while the reactors are stopped, then each
  reactor started alone and timed from its first to its last inbox row; against a raw aio-pika consumer
  (callback, manual ack, the reactors' prefetch) of the same bodies from a quorum queue;
- notification: the same N events, timed from the first to the last mail the sink stored; against a raw
  aiosmtplib client sending those very mails (the sink's copies, same envelope) to the same sink over
  `smtp_connections` kept-open connections.

    python -m bench.consume --messages 2000     # a stack of its own, these phases only; prints JSON

Reusable: `consume_phase(stack, engine, meter, ...)` is what `bench.e2e` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Any

import aio_pika
import aiosmtplib
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.meter import Meter
from contracts.envelope import STRUCTURED_CONTENT_TYPE, encode_event, new_event
from contracts.orders import ORDER_SHIPPED_V1, OrderLineV1, OrderShippedV1, ShipmentV1
from infra.settings import Settings
from messaging.broker import close_quietly, connect
from ops.launcher import REACTOR_NAMES, LocalStack
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage

DATABASE_REACTORS = tuple(name for name in REACTOR_NAMES if name != "notification")


def synthetic_shipped_events(count: int) -> list[tuple[str, bytes]]:
    """(event id, encoded body) of valid order.shipped.v1 events, as the relay would publish them."""
    now = datetime.now(UTC)
    events = []
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
    return events


async def publish_all(
    settings: Settings, exchange: str, routing_key: str, bodies: list[tuple[str, bytes]]
) -> None:
    """Persistent, confirmed publishes, a hundred confirms awaited at a time."""
    connection = await connect(settings, "bench-publish")
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=False) if exchange else channel.default_exchange
        for chunk in range(0, len(bodies), 100):
            await asyncio.gather(
                *(
                    target.publish(
                        aio_pika.Message(
                            body,
                            message_id=message_id,
                            type=routing_key,
                            content_type=STRUCTURED_CONTENT_TYPE,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=routing_key,
                    )
                    for message_id, body in bodies[chunk : chunk + 100]
                )
            )
    finally:
        await close_quietly(connection, 10)


async def raw_aio_pika(
    settings: Settings, queue_name: str, bodies: list[tuple[str, bytes]]
) -> dict[str, Any]:
    """The same messages from a quorum queue, consumed with aio-pika alone: manual ack, the same prefetch.
    Messages per second (first to last) and the client's CPU ms per message."""
    connection = await connect(settings, "bench-raw")
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.reactor_prefetch)
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 20}
        )
        await publish_all(settings, "", queue_name, bodies)
        stamps: list[float] = []
        finished = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            stamps.append(time.perf_counter())
            if len(stamps) == len(bodies):
                finished.set()

        cpu = time.process_time()
        tag = await queue.consume(on_message)
        await asyncio.wait_for(finished.wait(), 300)
        cpu = time.process_time() - cpu
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        return {"per_second": _rate(stamps), "cpu_ms_per_message": cpu * 1000 / len(bodies)}
    finally:
        await close_quietly(connection, 10)


async def raw_smtp(settings: Settings, mails: list[bytes], connections: int) -> dict[str, Any]:
    """The mails sent again to the sink by aiosmtplib alone over `connections` kept-open connections (one
    mail at a time on each): mails per second (first to last) and the client's CPU ms per mail."""
    sender = parseaddr(settings.smtp_sender)[1]
    queue: asyncio.Queue[tuple[list[str], bytes]] = asyncio.Queue()
    for mail in mails:  # envelopes read before the clock starts
        to = message_from_bytes(mail, policy=policy.default).get_all("To", [])
        queue.put_nowait(([address for _, address in getaddresses(to)], mail))
    stamps: list[float] = []

    async def sender_loop() -> None:
        client = aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port, start_tls=False)
        await client.connect()
        try:
            while not queue.empty():
                recipients, mail = queue.get_nowait()
                await client.sendmail(sender, recipients, mail)
                stamps.append(time.perf_counter())
        finally:
            await client.quit()

    cpu = time.process_time()
    await asyncio.gather(*(sender_loop() for _ in range(connections)))
    cpu = time.process_time() - cpu
    return {
        "per_second": _rate(sorted(stamps)),
        "cpu_ms_per_mail": cpu * 1000 / len(mails),
        "connections": connections,
    }


def _rate(stamps: list[float]) -> float:
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    return (len(stamps) - 1) / span if span > 0 else float("nan")


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


async def _inbox_span(
    engine: AsyncEngine, consumer: str, ids: list[str], within: float
) -> tuple[float, float]:
    deadline = time.monotonic() + within
    while True:
        async with engine.connect() as connection:
            applied, first, last = (
                await connection.execute(
                    select(
                        func.count(), func.min(InboxMessage.processed_at), func.max(InboxMessage.processed_at)
                    )
                    .where(InboxMessage.consumer == consumer)
                    .where(InboxMessage.message_id.in_(ids))
                )
            ).one()
        if applied >= len(ids):
            return first.timestamp(), last.timestamp()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{consumer}: {applied}/{len(ids)} applied; ledger: {await troubles(engine, consumer)}"
            )
        await asyncio.sleep(0.25)


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


async def consume_phase(
    stack: LocalStack,
    engine: AsyncEngine,
    meter: Meter,
    count: int,
    *,
    smtp_connections: int = 1,
    within: float = 300,
    log: Any = print,
) -> dict[str, Any]:
    """Each reactor alone on `count` queued events, then the raw clients; see the module's docstring.
    The reactors are running again afterwards."""
    for name in REACTOR_NAMES:
        await stack.components[f"reactor-{name}"].stop()
    bodies = synthetic_shipped_events(count)
    ids = [event_id for event_id, _ in bodies]
    await publish_all(stack.settings, stack.topology.exchange, ORDER_SHIPPED_V1.routing_key, bodies)
    result: dict[str, Any] = {"messages": count}

    for name in DATABASE_REACTORS:
        before = await meter.snapshot()
        await stack.start_component(f"reactor-{name}")
        first, last = await _inbox_span(engine, name, ids, within)
        after = await meter.snapshot()
        result[name] = {
            "per_second": (count - 1) / (last - first) if last > first else float("nan"),
            "troubles": await troubles(engine, name),
            "cost_per_message": Meter.cost(before, after, count),
        }
        log(f"reactor {name}: {count} messages at {result[name]['per_second']:.0f}/s")

    known = {path.name for path in (stack.maildir / "new").glob("*")}
    before = await meter.snapshot()
    await stack.start_component("reactor-notification")
    deadline = time.monotonic() + within
    while len(mails := _new_mails(stack.maildir, known)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"notification: {len(mails)}/{count} mails stored")
        await asyncio.sleep(0.25)
    await _inbox_span(engine, "notification", ids, within)  # its bookkeeping done too
    after = await meter.snapshot()
    stamps = sorted(mails.values())
    result["notification"] = {
        "per_second": _rate(stamps),
        "troubles": await troubles(engine, "notification"),
        "cost_per_mail": Meter.cost(before, after, count),
    }
    log(f"reactor notification: {count} mails at {result['notification']['per_second']:.0f}/s")

    raw_mails = [(stack.maildir / "new" / name).read_bytes() for name in mails]
    before = await meter.snapshot()
    result["raw_smtp"] = await raw_smtp(stack.settings, raw_mails, smtp_connections)
    after = await meter.snapshot()
    result["raw_smtp"]["cost_per_mail"] = Meter.cost(before, after, count)
    log(f"raw aiosmtplib: {count} mails at {result['raw_smtp']['per_second']:.0f}/s")

    result["raw_aio_pika"] = await raw_aio_pika(
        stack.settings, f"{stack.topology.namespace}.rawbench", bodies
    )
    log(f"raw aio-pika: {count} messages at {result['raw_aio_pika']['per_second']:.0f}/s")
    for name in DATABASE_REACTORS:
        result[name]["cpu_ms_per_message"] = result[name]["cost_per_message"]["cpu_ms"][f"reactor-{name}"]
    result["notification"]["cpu_ms_per_mail"] = result["notification"]["cost_per_mail"]["cpu_ms"][
        "reactor-notification"
    ]
    result["raw_smtp"]["sink_cpu_ms_per_mail"] = result["raw_smtp"]["cost_per_mail"]["cpu_ms"].get(
        "smtp", 0.0
    )
    return result


def main(argv: list[str] | None = None) -> None:
    from bench.e2e import launched_stack

    parser = argparse.ArgumentParser(prog="python -m bench.consume", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--smtp-connections", type=int, default=1, help="raw SMTP client's connections")
    args = parser.parse_args(argv)

    async def run() -> dict[str, Any]:
        async with launched_stack({}) as (stack, engine, meter):
            return await consume_phase(
                stack, engine, meter, args.messages, smtp_connections=args.smtp_connections
            )

    print(json.dumps(asyncio.run(run()), indent=2, default=str))


if __name__ == "__main__":
    main()
