"""A real FastStream subscriber for the outbox's broker tests.

Usage: faststream_consume.py <nats|rabbit|kafka|redis> <url> <destination> <count> [stream]

`stream` names the JetStream stream for nats; for rabbit, `stream` says the queue is a RabbitMQ stream.

Subscribes the way a FastStream service would, with handlers typed by Pydantic models of the events, collects
`count` messages (or times out), validates each raw message as a CloudEvent with the Python CloudEvents SDK for the
broker's binding, and prints one JSON document: {"received": [...]} with, per message, what the handler saw.
"""

import asyncio
import json
import os
import sys
import uuid
from typing import Union

# FastStream logs to stdout; keep stdout for the JSON result alone.
RESULT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

from cloudevents.core.bindings import amqp, http, kafka
from cloudevents.core.formats.json import JSONFormat
from faststream import Context
from pydantic import BaseModel


class AccountOpened(BaseModel):
    account: str
    seq: int


class AccountClosed(BaseModel):
    account: str
    reason: str


FORMAT = JSONFormat()


def as_text(value):
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def cloudevent(kind, headers, body, content_type):
    """The CloudEvent the SDK reads from the raw message, as plain attributes."""
    if kind == "nats":
        event = http.from_binary(http.HTTPMessage(headers=headers, body=body), FORMAT)
    elif kind == "rabbit":
        message = amqp.AMQPMessage(
            properties={"content-type": content_type}, application_properties=headers, application_data=body
        )
        event = amqp.from_binary(message, FORMAT)
    else:  # kafka and redis carry raw ce_ headers
        message = kafka.KafkaMessage(headers={k: v.encode("utf-8") for k, v in headers.items()}, key=None, value=body)
        event = kafka.from_binary(message, FORMAT)
    attributes = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in event.get_attributes().items()}
    return {"attributes": attributes, "data": event.get_data()}


async def main():
    kind, url, destination, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    stream = sys.argv[5] if len(sys.argv) > 5 else None
    received = []
    done = asyncio.Event()

    if kind == "nats":
        from faststream.nats import JStream, NatsBroker
        from nats.js.api import DeliverPolicy

        broker = NatsBroker(url)
        subscriber = broker.subscriber(
            destination, stream=JStream(stream, declare=False), deliver_policy=DeliverPolicy.ALL
        )
    elif kind == "rabbit":
        from faststream.rabbit import RabbitBroker, RabbitQueue

        broker = RabbitBroker(url)
        if stream == "stream":
            # A RabbitMQ stream is read from an offset, with a prefetch the broker insists on.
            from faststream.rabbit import Channel, QueueType

            subscriber = broker.subscriber(
                RabbitQueue(destination, queue_type=QueueType.STREAM, durable=True, declare=False),
                consume_args={"x-stream-offset": "first"},
                channel=Channel(prefetch_count=64),
            )
        else:
            subscriber = broker.subscriber(RabbitQueue(destination, declare=False))
    elif kind == "kafka":
        from faststream.kafka import KafkaBroker

        broker = KafkaBroker(url)
        subscriber = broker.subscriber(destination, group_id=f"outbox-test-{uuid.uuid4()}", auto_offset_reset="earliest")
    elif kind == "redis":
        from faststream.redis import RedisBroker, StreamSub

        broker = RedisBroker(url)
        subscriber = broker.subscriber(stream=StreamSub(destination, last_id="0"))
    else:
        raise SystemExit(f"unknown broker {kind}")

    @subscriber
    async def handle(event: Union[AccountOpened, AccountClosed], message=Context("message")):
        headers = {as_text(k): as_text(v) for k, v in (message.headers or {}).items()}
        received.append(
            {
                "event": event.model_dump(),
                "event_class": type(event).__name__,
                "message_id": message.message_id,
                "correlation_id": message.correlation_id,
                "content_type": message.content_type,
                "headers": headers,
                "cloudevent": cloudevent(kind, headers, message.body, message.content_type),
            }
        )
        if len(received) >= count:
            done.set()

    async with broker:
        await broker.start()
        try:
            await asyncio.wait_for(done.wait(), timeout=30)
        except asyncio.TimeoutError:
            pass
    json.dump({"received": received}, RESULT, default=str)
    RESULT.flush()


if __name__ == "__main__":
    asyncio.run(main())
