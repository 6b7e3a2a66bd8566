"""Broker connections and the confirmed publisher. Every broker call is bounded by a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, HeadersType

from infra.settings import Settings

log = logging.getLogger(__name__)

# Errors that mean "the broker or the link to it is not there right now": retry later.
BROKER_UNAVAILABLE: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    TimeoutError,
    aio_pika.exceptions.AMQPError,
)


async def connect(settings: Settings, name: str) -> AbstractConnection:
    """A plain (non-robust) connection; callers reconnect themselves, so nothing is silently replayed."""
    return await aio_pika.connect(
        settings.rabbitmq_url,
        timeout=settings.broker_call_timeout_seconds,
        client_properties={"connection_name": name},
    )


async def close_quietly(connection: AbstractConnection | None, call_timeout: float) -> None:
    """Close without letting a hung broker hang the caller (close() has been seen to hang)."""
    if connection is None or connection.is_closed:
        return
    with contextlib.suppress(*BROKER_UNAVAILABLE):
        await asyncio.wait_for(connection.close(), call_timeout)


class ConfirmedPublisher:
    """Publishes persistent messages on its own connection and waits for the broker's confirm.

    Mandatory routing with `on_return_raises`: a message no queue is bound for raises
    `aio_pika.exceptions.PublishError` instead of vanishing. Any failure closes the connection; the next
    publish opens a new one.
    """

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self._name = name
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._side: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        # Bumped on every new connection, so users can redeclare what a new connection needs.
        self.generation = 0

    async def _ready_channel(self) -> AbstractChannel:
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            await close_quietly(self._connection, self._settings.broker_call_timeout_seconds)
            self._connection = await connect(self._settings, self._name)
            self._side = None
            self.generation += 1
            self._channel = await asyncio.wait_for(
                self._connection.channel(publisher_confirms=True, on_return_raises=True),
                self._settings.broker_call_timeout_seconds,
            )
            return self._channel

    async def channel(self) -> AbstractChannel:
        """The publishing channel (opened on demand), e.g. to declare topology."""
        return await self._ready_channel()

    async def side_channel(self) -> AbstractChannel:
        """A second channel on the publishing connection (opened on demand, again after it closed), for calls
        that close their channel when they fail: a passive declare of a missing queue answers 404 NOT_FOUND
        and the broker closes the channel, which must not be the publishing one."""
        await self._ready_channel()
        if self._side is None or self._side.is_closed:
            assert self._connection is not None
            self._side = await asyncio.wait_for(
                self._connection.channel(publisher_confirms=False),
                self._settings.broker_call_timeout_seconds,
            )
        return self._side

    async def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        message_id: str,
        message_type: str | None = None,
        content_type: str = "application/json",
        timestamp: datetime | None = None,
        headers: Mapping[str, object] | None = None,
    ) -> None:
        """Publish and wait for the confirm. Raises on nack, return (unroutable), timeout or lost link."""
        timeout = self._settings.broker_call_timeout_seconds
        try:
            channel = await self._ready_channel()
            target: AbstractExchange = (
                channel.default_exchange
                if exchange == ""
                else await channel.get_exchange(exchange, ensure=False)
            )
            message = aio_pika.Message(
                body,
                message_id=message_id,
                type=message_type,
                content_type=content_type,
                timestamp=timestamp,
                headers=_headers(headers),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await target.publish(message, routing_key=routing_key, mandatory=True, timeout=timeout)
        except aio_pika.exceptions.DeliveryError:
            raise  # returned (unroutable) or nacked: the channel itself is still fine
        except BaseException:
            # The confirm may or may not have been lost: start over on a fresh connection.
            await self.close()
            raise

    async def close(self) -> None:
        connection, self._connection, self._channel, self._side = self._connection, None, None, None
        await close_quietly(connection, self._settings.broker_call_timeout_seconds)


def _headers(headers: Mapping[str, object] | None) -> HeadersType:
    return dict(headers or {})  # type: ignore[arg-type]
