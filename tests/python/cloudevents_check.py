"""Parses messages rendered by the outbox crate with the CloudEvents Python SDK (2.x), the reference oracle.

stdin: {"kafka": {"headers": [[name, value]], "key": str, "value": str},
        "amqp": {"content_type": str, "application_properties": {..}, "body": str},
        "rabbitmq": {"content_type": str, "headers": {..}, "body": str},
        "http": {"headers": {..}, "body": str},
        "structured": str}
stdout: {mode: {"attributes": {..}, "data": ..}} for each mode given; any parse failure raises.
"""

import json
import sys
from datetime import datetime

from cloudevents.core.bindings import amqp, http, kafka, rabbitmq
from cloudevents.core.formats.json import JSONFormat

FORMAT = JSONFormat()


def plain(event):
    attributes = {}
    for name, value in event.get_attributes().items():
        attributes[name] = value.isoformat() if isinstance(value, datetime) else value
    return {"attributes": attributes, "data": event.get_data()}


def main():
    given = json.load(sys.stdin)
    parsed = {}
    if "kafka" in given:
        m = given["kafka"]
        message = kafka.KafkaMessage(
            headers={name: value.encode("utf-8") for name, value in m["headers"]},
            key=m["key"].encode("utf-8"),
            value=m["value"].encode("utf-8"),
        )
        parsed["kafka"] = plain(kafka.from_binary(message, FORMAT))
    if "amqp" in given:
        m = given["amqp"]
        message = amqp.AMQPMessage(
            properties={"content-type": m["content_type"]},
            application_properties=m["application_properties"],
            application_data=m["body"].encode("utf-8"),
        )
        parsed["amqp"] = plain(amqp.from_binary(message, FORMAT))
    if "rabbitmq" in given:
        m = given["rabbitmq"]
        message = rabbitmq.RabbitMQMessage(
            headers=m["headers"], content_type=m["content_type"], body=m["body"].encode("utf-8")
        )
        parsed["rabbitmq"] = plain(rabbitmq.from_binary(message, FORMAT))
    if "http" in given:
        m = given["http"]
        message = http.HTTPMessage(headers=m["headers"], body=m["body"].encode("utf-8"))
        parsed["http"] = plain(http.from_binary(message, FORMAT))
    if "structured" in given:
        parsed["structured"] = plain(FORMAT.read(None, given["structured"].encode("utf-8")))
    json.dump(parsed, sys.stdout)


if __name__ == "__main__":
    main()
