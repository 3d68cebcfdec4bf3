#!/usr/bin/env python3
"""Publish every row of a CSV file to a RabbitMQ queue, one JSON message per row.

Baseline for the mqdemo benchmark, written the way the original pika demo was:
csv.DictReader, json.dumps(row) (all values stay strings), one basic_publish per
row on a BlockingConnection, persistent messages, durable queue.  With --confirm
the channel is put in confirm mode, so every basic_publish blocks until the
broker has confirmed that message (one round trip per row).

Prints one line of JSON: {"messages": N, "bytes": B, "seconds": S}
(bytes = sum of message bodies; seconds = from the first row read until the
connection is closed, i.e. the broker has received everything).
"""
import argparse
import csv
import json
import time

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--file", required=True, help="CSV file with a header row")
parser.add_argument("--queue", required=True)
parser.add_argument("--confirm", action="store_true", help="wait for a publisher confirm after each row")
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
with open(args.file, newline="") as f:
    reader = csv.DictReader(f)
    for row in reader:
        body = json.dumps(row)
        channel.basic_publish(
            exchange="",
            routing_key=args.queue,
            body=body,
            properties=pika.BasicProperties(delivery_mode=2),
        )
        messages += 1
        total_bytes += len(body.encode("utf-8"))
connection.close()
seconds = time.perf_counter() - start

print(json.dumps({"messages": messages, "bytes": total_bytes, "seconds": round(seconds, 6)}))
