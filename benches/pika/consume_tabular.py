#!/usr/bin/env python3
"""Consume N tabular messages (one JSON object per message) from a RabbitMQ queue.

Baseline for the mqdemo benchmark, written the way the original pika demo was:
BlockingConnection, basic_qos(prefetch_count=1) by default, basic_consume with a
callback that json.loads the body, writes the row as one JSON line to the output
file and acks the message.  Stops (stop_consuming) after --count messages; it
waits forever if the queue holds fewer, so wrap it in `timeout` in scripts.

Prints one line of JSON: {"messages": N, "bytes": B, "seconds": S}
(bytes = sum of message bodies; seconds = from the first message's arrival
until the last one has been written and acked).
"""
import argparse
import json
import os
import time

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--queue", required=True)
parser.add_argument("--count", type=int, required=True, help="stop after this many messages")
parser.add_argument("--prefetch", type=int, default=1)
parser.add_argument("--output", default=os.devnull, help="JSON-lines file to append to (default: discard)")
parser.add_argument("--host", default="localhost")
args = parser.parse_args()

connection = pika.BlockingConnection(pika.ConnectionParameters(host=args.host))
channel = connection.channel()
channel.queue_declare(queue=args.queue, durable=True)
channel.basic_qos(prefetch_count=args.prefetch)

out = open(args.output, "a")
stats = {"messages": 0, "bytes": 0, "first": None, "last": None}


def callback(ch, method, properties, body):
    if stats["first"] is None:
        stats["first"] = time.perf_counter()
    row = json.loads(body)
    out.write(json.dumps(row) + "\n")
    ch.basic_ack(delivery_tag=method.delivery_tag)
    stats["messages"] += 1
    stats["bytes"] += len(body)
    stats["last"] = time.perf_counter()
    if stats["messages"] >= args.count:
        ch.stop_consuming()


if args.count > 0:
    channel.basic_consume(queue=args.queue, on_message_callback=callback)
    channel.start_consuming()
out.close()
connection.close()

seconds = (stats["last"] - stats["first"]) if stats["first"] is not None else 0.0
print(json.dumps({"messages": stats["messages"], "bytes": stats["bytes"], "seconds": round(seconds, 6)}))
