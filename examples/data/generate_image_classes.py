#!/usr/bin/env python3
"""Generate the labelled pictures of the image_classification example.

Run from anywhere:  python3 examples/data/generate_image_classes.py

Writes, relative to this file's directory:

    image_classes/train/<label>/<label>_<n>.png     4 pictures per label: the classifier's
                                                    training set (read at start-up)
    image_classes/test/<label>/<label>_<n>.{png,jpg} 3 pictures per label, different
                                                    seeds: what the example classifies

Labels: sky, forest, sunset, snow. Each picture is 40x40, drawn from random shapes and
colours around its label's palette, so no two are alike and a colour histogram (not the
exact pixels) is what tells the labels apart. Deterministic: same PRNG and encoders as
generate.py (imported from it), so reruns give byte-identical files.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import Rng, clamp, encode_jpeg, encode_png, mix, write_bytes  # noqa: E402

SEED = 20240717
SIZE = 40
LABELS = ["sky", "forest", "sunset", "snow"]


def jitter(rng, colour, amount):
    return tuple(clamp(c + rng.randint(-amount, amount), 0, 255) for c in colour)


def ellipses(rng, count, rx, ry):
    return [(rng.randint(0, SIZE), rng.randint(0, SIZE), rng.randint(*rx), rng.randint(*ry))
            for _ in range(count)]


def inside(x, y, shapes):
    return any(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0 for cx, cy, rx, ry in shapes)


def sky(rng):
    top, bottom = jitter(rng, (40, 90, 200), 25), jitter(rng, (150, 200, 245), 15)
    clouds = ellipses(rng, rng.randint(1, 4), (4, 10), (2, 5))
    cloud = jitter(rng, (240, 242, 248), 8)

    def shade(x, y):
        return cloud if inside(x, y, clouds) else mix(top, bottom, y / SIZE)
    return shade


def forest(rng):
    dark, light = jitter(rng, (20, 70, 30), 12), jitter(rng, (50, 120, 45), 15)
    trunks = [(rng.randint(0, SIZE), rng.randint(2, 4)) for _ in range(rng.randint(2, 5))]
    bark = jitter(rng, (90, 60, 30), 10)
    leaves = ellipses(rng, rng.randint(4, 9), (2, 6), (2, 6))
    leaf = jitter(rng, (70, 150, 60), 15)

    def shade(x, y):
        if inside(x, y, leaves):
            return leaf
        if any(abs(x - tx) < w and y > SIZE * 0.3 for tx, w in trunks):
            return bark
        return mix(dark, light, y / SIZE)
    return shade


def sunset(rng):
    top, horizon = jitter(rng, (90, 40, 110), 15), jitter(rng, (240, 120, 40), 15)
    ground_at = SIZE * (0.7 + rng.randint(0, 15) / 100)
    sun = (rng.randint(8, 32), ground_at - rng.randint(0, 6), rng.randint(4, 8))
    ground = jitter(rng, (35, 20, 35), 8)

    def shade(x, y):
        if y >= ground_at:
            return ground
        sx, sy, r = sun
        if (x - sx) ** 2 + (y - sy) ** 2 <= r * r:
            return (250, 215, 90)
        return mix(top, horizon, y / ground_at)
    return shade


def snow(rng):
    base = jitter(rng, (238, 240, 245), 8)
    shadows = ellipses(rng, rng.randint(2, 5), (5, 12), (2, 5))
    shadow = jitter(rng, (185, 198, 218), 10)
    rocks = ellipses(rng, rng.randint(0, 3), (1, 3), (1, 2))

    def shade(x, y):
        if inside(x, y, rocks):
            return (70, 68, 72)
        if inside(x, y, shadows):
            return shadow
        return base
    return shade


PAINTERS = {"sky": sky, "forest": forest, "sunset": sunset, "snow": snow}


def picture(rng, label):
    shade = PAINTERS[label](rng)
    pixels = []
    for y in range(SIZE):
        for x in range(SIZE):
            r, g, b = shade(x + 0.5, y + 0.5)
            noise = rng.randint(-6, 6)
            pixels.extend(clamp(int(round(c)) + noise, 0, 255) for c in (r, g, b))
    return pixels


def main():
    rng = Rng(SEED)
    written = 0
    for label in LABELS:
        for n in range(1, 5):
            px = picture(rng, label)
            write_bytes(f"image_classes/train/{label}/{label}_{n}.png", encode_png(SIZE, SIZE, 3, px))
            written += 1
        for n in range(5, 8):
            px = picture(rng, label)
            if n == 7:
                data, ext = encode_jpeg(SIZE, SIZE, px, 3, quality=85, subsampling="444"), "jpg"
            else:
                data, ext = encode_png(SIZE, SIZE, 3, px), "png"
            write_bytes(f"image_classes/test/{label}/{label}_{n}.{ext}", data)
            written += 1
    print(f"wrote image_classes/: {written} pictures, labels {', '.join(LABELS)}")


if __name__ == "__main__":
    main()
