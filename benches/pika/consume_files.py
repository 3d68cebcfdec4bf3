#!/usr/bin/env python3
"""Consume N file messages from a RabbitMQ queue and write each to a directory.

Baseline for the mqdemo benchmark, written the way the original pika demo was:
BlockingConnection, basic_qos(prefetch_count=1) by default, a callback that
writes the body to OUTPUT_DIRECTORY/<source header> with a plain open/write and
acks the message.  Stops after --count messages; it waits forever if the queue
holds fewer, so wrap it in `timeout` in scripts.

Like the demo, the `source` header is trusted as-is (no path sanitising): use it
only with messages from produce_files.py.

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
parser.add_argument("--output-directory", required=True)
parser.add_argument("--prefetch", type=int, default=1)
parser.add_argument("--host", default="localhost")
args = parser.parse_args()

connection = pika.BlockingConnection(pika.ConnectionParameters(host=args.host))
channel = connection.channel()
channel.queue_declare(queue=args.queue, durable=True)
channel.basic_qos(prefetch_count=args.prefetch)

stats = {"messages": 0, "bytes": 0, "first": None, "last": None}


def callback(ch, method, properties, body):
    if stats["first"] is None:
        stats["first"] = time.perf_counter()
    path = os.path.join(args.output_directory, properties.headers["source"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(body)
    ch.basic_ack(delivery_tag=method.delivery_tag)
    stats["messages"] += 1
    stats["bytes"] += len(body)
    stats["last"] = time.perf_counter()
    if stats["messages"] >= args.count:
        ch.stop_consuming()


if args.count > 0:
    channel.basic_consume(queue=args.queue, on_message_callback=callback)
    channel.start_consuming()
connection.close()

seconds = (stats["last"] - stats["first"]) if stats["first"] is not None else 0.0
print(json.dumps({"messages": stats["messages"], "bytes": stats["bytes"], "seconds": round(seconds, 6)}))
