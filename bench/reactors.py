"""The reactors' consume rates against raw clients, in one run: `python -m bench.reactors [--messages 2000]`.

Prints figures (and writes them as JSON with `--json PATH`); asserts nothing. Needs PostgreSQL and RabbitMQ
(run it under `flock -s /tmp/broker.lock`), not Temporal. One run, on a fresh PostgreSQL database:

1. `--messages` order.shipped.v1 events are queued to the three reactors' queues (confirmed publishes).
2. An SMTP sink (aiosmtpd, no Maildir) runs in a process of its own.
3. Each reactor runs alone in a process of its own, started once its imports are done, and is timed from
   its first to its last inbox row. In that process, SQLAlchemy event counters count statements and
   transactions (begin, commit, rollback) and a wrapper around aiosmtplib counts SMTP commands; a database
   round trip here is a statement, a BEGIN, a COMMIT or a ROLLBACK (asyncpg sends each on its own); the
   pool's checkouts are counted apart (each costs one more round trip while the engine pre-pings).
4. Raw clients on the same box, just before and just after each reactor (the box's load drifts; the
   reactor is compared with their mean): aio-pika consuming the same bodies from a quorum queue (manual
   acks, the reactors' prefetch), and aiosmtplib sending the notification's mails (composed beforehand with
   the email package) to the same sink over `notification_smtp_connections` connections (and, at the end,
   over one).
5. Then each reactor again, fed `--one-at-a-time` messages on its own queue, each published once the last
   one is applied: what a message costs in round trips when it comes alone, as at the pipeline's rates.

CPU per message is the process's user + system time over the timed window (psutil). The same script run
on an export of an older commit measures the before (it only uses what both have).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import psutil
from aiosmtplib.email import flatten_message
from sqlalchemy import func, select

from bench.e2e import publish_all, raw_consume, synthetic_shipped_events
from contracts.envelope import STRUCTURED_CONTENT_TYPE, ReceivedEvent, encode_event
from contracts.orders import ORDER_SHIPPED_V1, OrderShippedV1
from infra.db import open_database
from infra.settings import Settings, load_settings
from messaging.broker import ConfirmedPublisher, close_quietly, connect
from messaging.topology import declare_subscription, delete_topology
from ops.launcher import REACTOR_NAMES, LocalStack, StackOptions
from ops.provisioning import empty_database, migrate
from reactors.models import InboxMessage
from reactors.registry import reactor_named

POLL_SECONDS = 0.1
Feed = Callable[[], Awaitable[None]]


# --- the processes this script starts (`python -m bench.reactors sink|serve ...`)


def serve_sink(settings: Settings) -> None:
    """An SMTP sink without Maildir until SIGTERM."""
    from reactors.notification.smtp_sink import SmtpSink

    sink = SmtpSink(settings.smtp_host, settings.smtp_port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    sink.start()
    try:
        stopped.wait()
    finally:
        sink.stop()


def serve_reactor(name: str, gate: Path, profile: bool = False) -> None:
    """One reactor, counted: imports done, `<gate>.ready` is written; it starts once `<gate>.go` exists, and
    writes its counts to `<gate>.json` when SIGTERM stops it (and a cProfile to `<gate>.prof`)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    from entrypoints import reactors

    counts: Counter[str] = Counter()
    for name_ in ("begin", "commit", "rollback"):
        event.listen(Engine, name_, lambda *_, key=name_: counts.update([key]))
    event.listen(Engine, "before_cursor_execute", lambda *_: counts.update(["statements"]))
    # A checkout of a pooled connection: one more round trip where the engine pings (`pool_pre_ping`).
    event.listen(Pool, "checkout", lambda *_: counts.update(["checkouts"]))
    execute = aiosmtplib.SMTP.execute_command

    async def counted(self: aiosmtplib.SMTP, *args: Any, **kwargs: Any) -> Any:
        counts.update(["smtp_commands"])
        return await execute(self, *args, **kwargs)

    aiosmtplib.SMTP.execute_command = counted  # type: ignore[method-assign]
    data = aiosmtplib.SMTP.data

    async def counted_data(self: aiosmtplib.SMTP, *args: Any, **kwargs: Any) -> Any:
        counts.update(["smtp_data"])  # DATA, then the message: two replies awaited, outside execute_command
        return await data(self, *args, **kwargs)

    aiosmtplib.SMTP.data = counted_data  # type: ignore[method-assign]
    gate.with_suffix(".ready").touch()
    while not gate.with_suffix(".go").exists():
        time.sleep(0.01)
    profiler = cProfile.Profile() if profile else None
    try:
        if profiler is not None:
            profiler.runcall(reactors.main, [name])
        else:
            reactors.main([name])
    finally:
        gate.with_suffix(".json").write_text(json.dumps(counts))
        if profiler is not None:
            profiler.dump_stats(gate.with_suffix(".prof"))


# --- the run


class Run:
    def __init__(self, args: argparse.Namespace, stack: LocalStack) -> None:
        self.args = args
        self.stack = stack
        self.settings = stack.settings
        self.database = open_database(stack.settings)
        self.workdir = stack.options.workdir

    async def queue_events(self, bodies: list[tuple[str, bytes]]) -> None:
        connection = await connect(self.settings, "bench-reactors-declare")
        try:
            channel = await connection.channel()
            for name in REACTOR_NAMES:
                subscription = reactor_named(name).subscription
                await declare_subscription(channel, self.stack.topology, subscription, 10)
        finally:
            await close_quietly(connection, 10)
        await publish_all(self.settings, self.stack.topology.exchange, ORDER_SHIPPED_V1.routing_key, bodies)

    async def delete_topology(self) -> None:
        connection = await connect(self.settings, "bench-reactors-cleanup")
        try:
            channel = await connection.channel()
            await delete_topology(channel, self.stack.topology, list(REACTOR_NAMES), 10)
        finally:
            await close_quietly(connection, 10)

    async def reactor(self, name: str, ids: list[str], feed: Feed | None = None) -> dict[str, Any]:
        """Run reactor `name` until it has applied `ids` (queued already, or published by `feed` once it
        runs); its figures."""
        phase = "alone" if feed else "backlog"
        gate = self.workdir / f"gate-{name}-{phase}"
        component = self.stack.python_component(
            f"reactor-{name}-{phase}",
            "bench.reactors",
            "serve",
            name,
            str(gate),
            *(["profile"] if self.args.profile else []),
        )
        await component.start()
        while not gate.with_suffix(".ready").exists():  # noqa: ASYNC110 (a file another process writes)
            await asyncio.sleep(0.01)
        process = psutil.Process(component.pid)
        cpu = process.cpu_times()
        gate.with_suffix(".go").touch()
        if feed is not None:
            await feed()
        first, last = await self._inbox_span(name, ids)
        cpu_after = process.cpu_times()
        await component.stop()
        counts = Counter(json.loads(gate.with_suffix(".json").read_text()))
        count = len(ids)
        transactions = counts["begin"]
        round_trips = counts["statements"] + counts["begin"] + counts["commit"] + counts["rollback"]
        result = {
            "per_second": (count - 1) / (last - first) if last > first else float("inf"),
            "cpu_ms_per_message": _cpu_ms(cpu, cpu_after) / count,
            "db_transactions_per_message": transactions / count,
            "db_round_trips_per_message": round_trips / count,
            "db_statements_per_message": counts["statements"] / count,
            "db_checkouts_per_message": counts["checkouts"] / count,
        }
        if counts["smtp_data"]:
            # Each command awaits its reply; DATA awaits two (the 354, then the reply to the message).
            result["smtp_round_trips_per_mail"] = (counts["smtp_commands"] + 2 * counts["smtp_data"]) / count
        return result

    def one_at_a_time(self, name: str, bodies: list[tuple[str, bytes]]) -> Feed:
        """A feed publishing `bodies` to reactor `name`'s queue alone, each once the last one is applied: the
        reactor meets each message alone, as at the pipeline's rates (batches of one)."""

        async def feed() -> None:
            publisher = ConfirmedPublisher(self.settings, "bench-reactors-one-at-a-time")
            try:
                for message_id, body in bodies:
                    await publisher.publish(
                        exchange="",
                        routing_key=self.stack.topology.queue(name),
                        body=body,
                        message_id=message_id,
                        message_type=ORDER_SHIPPED_V1.routing_key,
                        content_type=STRUCTURED_CONTENT_TYPE,
                    )
                    await self._inbox_span(name, [message_id], poll=0.002)
            finally:
                await publisher.close()

        return feed

    async def _inbox_span(
        self, consumer: str, ids: list[str], poll: float = POLL_SECONDS
    ) -> tuple[float, float]:
        deadline = time.monotonic() + self.args.timeout
        while True:
            async with self.database.sessions() as session:
                applied, first, last = (
                    await session.execute(
                        select(
                            func.count(),
                            func.min(InboxMessage.processed_at),
                            func.max(InboxMessage.processed_at),
                        ).where(InboxMessage.consumer == consumer, InboxMessage.message_id.in_(ids))
                    )
                ).one()
            if applied >= len(ids):
                return first.timestamp(), last.timestamp()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{consumer}: {applied}/{len(ids)} applied")
            await asyncio.sleep(poll)

    async def raw_smtp(self, mails: list[tuple[str, bytes]], connections: int) -> dict[str, Any]:
        """The same mails, composed beforehand, sent with aiosmtplib alone over `connections` connections."""
        sender = "orders@example.com"
        clients = [
            aiosmtplib.SMTP(hostname=self.settings.smtp_host, port=self.settings.smtp_port)
            for _ in range(connections)
        ]
        for client in clients:
            await client.connect()
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        for mail in mails:
            queue.put_nowait(mail)

        async def drain(client: aiosmtplib.SMTP) -> None:
            while not queue.empty():
                recipient, data = queue.get_nowait()
                await client.sendmail(sender, [recipient], data, mail_options=["BODY=8BITMIME"])

        process = psutil.Process()
        cpu = process.cpu_times()
        started = time.perf_counter()
        await asyncio.gather(*(drain(client) for client in clients))
        seconds = time.perf_counter() - started
        cpu_after = process.cpu_times()
        for client in clients:
            await client.quit()
        return {
            "connections": connections,
            "per_second": len(mails) / seconds,
            "cpu_ms_per_message": _cpu_ms(cpu, cpu_after) / len(mails),
        }


def _cpu_ms(before: Any, after: Any) -> float:
    return float((after.user + after.system - before.user - before.system) * 1000)


def composed_mails(events: list[Any], settings: Settings) -> list[tuple[str, bytes]]:
    """The notification's mails for `events`, composed with the email package as a plain client would."""
    from email.message import EmailMessage

    from reactors.notification.reactor import message_id_for, render

    mails = []
    for event in events:
        mail = render(ReceivedEvent(event, OrderShippedV1.model_validate(event.data)))
        message = EmailMessage()
        message["From"] = settings.smtp_sender
        message["To"] = mail.recipient
        message["Subject"] = mail.subject
        message["Message-ID"] = message_id_for(event.id)
        message.set_content(mail.body)
        mails.append((mail.recipient, flatten_message(message)))
    return mails


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-reactors-"))
    print(f"work directory (logs, profiles): {workdir}", flush=True)
    (workdir / "logs").mkdir()
    results: dict[str, Any] = {"messages": args.messages}
    async with empty_database("postgresql", workdir) as url:
        await migrate(url)
        extra_env = dict(item.split("=", 1) for item in args.env)
        stack = LocalStack(
            StackOptions(
                workdir=workdir,
                database_url=url,
                namespace="rbench-" + uuid.uuid4().hex[:8],
                extra_env=extra_env,
            )
        )
        bench = Run(args, stack)
        sink = stack.python_component("smtp-sink", "bench.reactors", "sink")
        try:
            events = synthetic_shipped_events(args.messages)
            bodies = [(event.id, encode_event(event)) for event in events]
            ids = [event_id for event_id, _ in bodies]
            mails = composed_mails(events, stack.settings)
            pool = getattr(stack.settings, "notification_smtp_connections", 1)
            await bench.queue_events(bodies)
            await sink.start()
            await stack.wait_for_port(stack.smtp_port, "smtp-sink")
            sink_process = psutil.Process(sink.pid)
            raw_queue = f"{stack.topology.namespace}.rawbench"
            for name in args.only:
                # The raw client just before and just after the reactor: the box's load drifts.
                if name == "notification":
                    raws = [await bench.raw_smtp(mails, pool)]
                else:
                    raws = [await raw_consume(stack.settings, raw_queue, bodies)]
                sink_cpu = sink_process.cpu_times()
                figures = results[name] = await bench.reactor(name, ids)
                if name == "notification":
                    figures["sink_cpu_ms_per_mail"] = _cpu_ms(sink_cpu, sink_process.cpu_times()) / len(ids)
                    raws.append(await bench.raw_smtp(mails, pool))
                else:
                    raws.append(await raw_consume(stack.settings, raw_queue, bodies))
                figures["raw"] = raws
                figures["raw_per_second"] = sum(raw["per_second"] for raw in raws) / len(raws)
                print(f"{name}: {json.dumps(figures)}", flush=True)
            for name in args.only if args.one_at_a_time else ():
                events = synthetic_shipped_events(args.one_at_a_time)
                bodies = [(event.id, encode_event(event)) for event in events]
                ids = [event_id for event_id, _ in bodies]
                results[f"{name}_alone"] = await bench.reactor(name, ids, bench.one_at_a_time(name, bodies))
                print(f"{name} one at a time: {json.dumps(results[f'{name}_alone'])}", flush=True)
            results["raw_smtp_one_connection"] = await bench.raw_smtp(mails, 1)
        finally:
            await sink.stop()
            await bench.database.dispose()
            await bench.delete_topology()
    return results


def summary(results: dict[str, Any]) -> str:
    lines = [f"reactor consume, {results['messages']} order.shipped.v1 each (one run):"]
    for name in [name for name in REACTOR_NAMES if name in results]:
        figures = results[name]
        against = "raw aiosmtplib" if name == "notification" else "raw aio-pika"
        raw = figures["raw_per_second"]
        lines.append(
            f"  {name:<13} {figures['per_second']:5.0f}/s = {figures['per_second'] / raw:.2f} of {against}"
            f" ({raw:.0f}/s, mean of just before and after); CPU {figures['cpu_ms_per_message']:.2f} ms/msg"
            f" (raw {sum(r['cpu_ms_per_message'] for r in figures['raw']) / len(figures['raw']):.2f});"
            f" DB {figures['db_round_trips_per_message']:.2f} round trips,"
            f" {figures['db_transactions_per_message']:.3f} transactions per message"
            + (
                f"; SMTP {figures['smtp_round_trips_per_mail']:.1f} round trips per mail,"
                f" sink CPU {figures['sink_cpu_ms_per_mail']:.2f} ms/mail"
                if name == "notification"
                else ""
            )
        )
    for name in [name for name in REACTOR_NAMES if f"{name}_alone" in results]:
        figures = results[f"{name}_alone"]
        lines.append(
            f"  {name:<13} one message at a time: DB {figures['db_round_trips_per_message']:.2f} round trips"
            f" (+ {figures['db_checkouts_per_message']:.2f} pool pre-pings),"
            f" {figures['db_transactions_per_message']:.2f} transactions per message"
        )
    raw = results["raw_smtp_one_connection"]
    lines.append(f"  raw aiosmtplib over one connection: {raw['per_second']:.0f}/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser("python -m bench.reactors", description=__doc__)
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "sink", "serve"])
    parser.add_argument("args", nargs="*", help="serve: REACTOR GATE_PATH [profile]")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--one-at-a-time", type=int, default=100, help="then this many, each alone (0: none)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="also write the figures there")
    parser.add_argument("--profile", action="store_true", help="cProfile each reactor (gate-<name>.prof)")
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="settings of the reactors")
    parser.add_argument("--only", nargs="*", default=list(REACTOR_NAMES), help="these reactors only")
    args = parser.parse_args(argv)
    if args.mode == "sink":
        serve_sink(load_settings())
    elif args.mode == "serve":
        serve_reactor(args.args[0], Path(args.args[1]), profile=args.args[2:] == ["profile"])
    else:
        results = asyncio.run(run(args))
        print(summary(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
