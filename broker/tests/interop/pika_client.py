"""Drives a broker with pika, a client nobody on this project wrote.

Usage: pika_client.py AMQP_URL. Exercises publish/consume, publisher confirms, a
mandatory publish that comes back, and an RPC with a reply queue; prints one line per
check and exits non-zero on the first failure.
"""

import sys
import uuid

import pika


def main(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()

    # Publish and consume through a broker-named exclusive queue.
    inbox = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    assert inbox.startswith("amq.gen-"), inbox
    channel.basic_publish("", inbox, b"hello from pika", pika.BasicProperties(content_type="text/plain"))
    method, properties, body = next(channel.consume(inbox, inactivity_timeout=5))
    assert body == b"hello from pika", body
    assert properties.content_type == "text/plain", properties
    channel.basic_ack(method.delivery_tag)
    channel.cancel()
    print("ok: publish, consume, ack")

    # A mandatory publish to nowhere comes back (pika raises UnroutableError with confirms).
    try:
        channel.basic_publish("", "nowhere-" + uuid.uuid4().hex, b"lost?", mandatory=True)
        raise AssertionError("an unroutable mandatory publish was not returned")
    except pika.exceptions.UnroutableError as returned:
        assert returned.messages[0].body == b"lost?"
    print("ok: mandatory publish returned")

    # RPC: a server on its own queue answers to reply_to with the correlation id.
    server = connection.channel()
    requests = server.queue_declare(queue="", exclusive=True).method.queue
    replies = channel.queue_declare(queue="", exclusive=True).method.queue
    correlation_id = uuid.uuid4().hex
    channel.basic_publish(
        "", requests, b"ping", pika.BasicProperties(reply_to=replies, correlation_id=correlation_id)
    )
    method, properties, body = next(server.consume(requests, inactivity_timeout=5))
    server.basic_publish(
        "", properties.reply_to, b"pong", pika.BasicProperties(correlation_id=properties.correlation_id)
    )
    server.basic_ack(method.delivery_tag)
    method, properties, body = next(channel.consume(replies, inactivity_timeout=5))
    assert (body, properties.correlation_id) == (b"pong", correlation_id), (body, properties)
    print("ok: rpc with reply queue and correlation id")

    connection.close()
    print("ok: closed")


if __name__ == "__main__":
    main(sys.argv[1])
