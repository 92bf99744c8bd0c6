"""A real FastStream producer for the consumer's interop test, publishing to NATS JetStream the three ways a
Python service does: a Pydantic model as plain JSON (twice, as a retry would, with one FastStream `message_id`),
a binary-mode CloudEvent and a structured-mode CloudEvent made with the Python CloudEvents SDK.

Usage: faststream_publish.py <url> <subject> <stream>

Prints one JSON document: {"published": [{"id": ..., "account": ..., "seq": ...}, ...]} of the distinct events.
"""

import asyncio
import json
import os
import sys
import uuid

# FastStream logs to stdout; keep stdout for the JSON result alone.
RESULT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

from cloudevents.core.bindings import http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from faststream.nats import NatsBroker
from pydantic import BaseModel


class AccountOpened(BaseModel):
    account: str
    seq: int


FORMAT = JSONFormat()


def cloudevent(account, seq):
    return CloudEvent(
        attributes={
            "id": str(uuid.uuid4()),
            "source": "/python-service",
            "type": "com.example.account.opened",
            "datacontenttype": "application/json",
            "partitionkey": account,
            "dataversion": "1.0",
        },
        data={"account": account, "seq": seq},
    )


async def main():
    url, subject, stream = sys.argv[1], sys.argv[2], sys.argv[3]
    published = []
    broker = NatsBroker(url)
    async with broker:
        plain_id = str(uuid.uuid4())
        for _ in range(2):
            await broker.publish(
                AccountOpened(account="py", seq=1),
                subject,
                headers={"message_id": plain_id},
                correlation_id="req-python",
                stream=stream,
            )
        published.append({"id": plain_id, "account": "py", "seq": 1})

        binary = cloudevent("py", 2)
        message = http.to_binary(binary, FORMAT)
        await broker.publish(message.body, subject, headers=dict(message.headers), stream=stream)
        published.append({"id": binary.get_id(), "account": "py", "seq": 2})

        structured = cloudevent("py", 3)
        message = http.to_structured(structured, FORMAT)
        await broker.publish(message.body, subject, headers=dict(message.headers), stream=stream)
        published.append({"id": structured.get_id(), "account": "py", "seq": 3})
    json.dump({"published": published}, RESULT)
    RESULT.flush()


if __name__ == "__main__":
    asyncio.run(main())
