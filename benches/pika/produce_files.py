#!/usr/bin/env python3
"""Publish every file under a directory (images, texts) to a RabbitMQ queue.

Baseline for the mqdemo benchmark, written the way the original pika demo was:
os.walk (sorted), each file's bytes as one persistent message with a `source`
header (the path relative to the directory, '/'-separated), one basic_publish per
file on a BlockingConnection, durable queue.  With --confirm every basic_publish
blocks until the broker has confirmed that message.

Prints one line of JSON: {"messages": N, "bytes": B, "seconds": S}
(bytes = sum of file sizes; seconds = from the first file read until the
connection is closed).
"""
import argparse
import json
import os
import time

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--directory", required=True)
parser.add_argument("--queue", required=True)
parser.add_argument("--confirm", action="store_true", help="wait for a publisher confirm after each file")
parser.add_argument("--host", default="localhost")
args = parser.parse_args()

connection = pika.BlockingConnection(pika.ConnectionParameters(host=args.host))
channel = connection.channel()
channel.queue_declare(queue=args.queue, durable=True)
if args.confirm:
    channel.confirm_delivery()

messages = 0
total_bytes = 0
start = time.perf_counter()
for root, dirs, files in os.walk(args.directory):
    dirs.sort()
    for name in sorted(files):
        path = os.path.join(root, name)
        source = os.path.relpath(path, args.directory).replace(os.sep, "/")
        with open(path, "rb") as f:
            body = f.read()
        channel.basic_publish(
            exchange="",
            routing_key=args.queue,
            body=body,
            properties=pika.BasicProperties(delivery_mode=2, headers={"source": source}),
        )
        messages += 1
        total_bytes += len(body)
connection.close()
seconds = time.perf_counter() - start

print(json.dumps({"messages": messages, "bytes": total_bytes, "seconds": round(seconds, 6)}))
