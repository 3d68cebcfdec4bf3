"""The digits example's model: a scikit-learn classifier behind `mqdemo pipe`.

At start it trains a support vector classifier (calibrated for a confidence) on the training part of scikit-learn's
bundled digits (digits_split.py: nothing is downloaded), then answers batches as
`mqdemo pipe --framing frames --batch-size N` sends them on stdin:

    request: a 4-byte big-endian count K (1..N), then K frames
    frame:   a 4-byte big-endian length, then that many bytes (here: one PNG image)
    answer:  the same shape on stdout: the count K, then K frames in the same order

Each answer frame is a JSON object, {"digit": 7, "confidence": 0.98}, or
{"error": "..."} for an input that is not a picture (a frame of length 0 would mean "no
output for this input"). The whole batch goes through the classifier in one call.
stdout carries answers only: logs go to stderr, and stdout is flushed after each answer.

Run by examples/digits.rs as
    mqdemo pipe --framing frames --batch-size 32 --exec '<venv>/bin/python model.py' ...
"""

import io
import json
import struct
import sys
import time

import numpy as np
from PIL import Image
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import SVC

import digits_split

# Guards against a desynchronised stream: more would be a protocol error, not data.
MAX_BATCH = 65536
MAX_FRAME_BYTES = 64 * 1024 * 1024


def log(message):
    print(f"digits model: {message}", file=sys.stderr, flush=True)


def train():
    """The classifier, fitted on the training split."""
    started = time.monotonic()
    images, _, labels, _ = digits_split.split()
    # An RBF support vector machine, calibrated so that it also says how sure it is.
    model = CalibratedClassifierCV(SVC(gamma=0.001), ensemble=False)
    model.fit(images.reshape(len(images), -1), labels)
    log(f"trained a calibrated SVC on {len(images)} digits in {time.monotonic() - started:.2f} s")
    return model


def read_exact(stream, n):
    """n bytes, or None at a clean end of input (EOF before the first byte)."""
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            if left == n:
                return None
            raise EOFError(f"input ended inside a frame ({n - left} of {n} bytes)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_u32(stream, what, limit):
    raw = read_exact(stream, 4)
    if raw is None:
        return None
    (value,) = struct.unpack(">I", raw)
    if value > limit:
        raise ValueError(f"{what} {value} is over {limit}: is mqdemo run with --framing frames?")
    return value


def read_batch(stream):
    """The frames of one request, or None when mqdemo closed stdin between requests."""
    count = read_u32(stream, "batch count", MAX_BATCH)
    if count is None:
        return None
    if count == 0:
        raise ValueError("batch count 0: a batch holds at least one input")
    frames = []
    for i in range(count):
        length = read_u32(stream, "frame length", MAX_FRAME_BYTES)
        if length is None:
            raise EOFError(f"input ended after {i} of {count} frames")
        frames.append(read_exact(stream, length) if length else b"")
    return frames


def classify(model, frames):
    """One answer (bytes) per frame, in order; one predict call for the whole batch."""
    answers = [b""] * len(frames)
    rows, places = [], []
    for i, frame in enumerate(frames):
        try:
            with Image.open(io.BytesIO(frame)) as picture:
                rows.append(digits_split.features(picture))
            places.append(i)
        except Exception as e:  # any picture Pillow cannot read fails that input alone
            reason = f"not a picture Pillow can read ({len(frame)} bytes, {type(e).__name__})"
            answers[i] = json.dumps({"error": reason}).encode()
    if rows:
        probabilities = model.predict_proba(np.stack(rows))
        for i, p in zip(places, probabilities):
            best = int(np.argmax(p))
            answer = {"digit": int(model.classes_[best]), "confidence": round(float(p[best]), 4)}
            answers[i] = json.dumps(answer).encode()
    return answers


def write_batch(stream, answers):
    parts = [struct.pack(">I", len(answers))]
    for answer in answers:
        parts.append(struct.pack(">I", len(answer)))
        parts.append(answer)
    stream.write(b"".join(parts))
    stream.flush()


def main():
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # Anything a library prints goes to stderr: stdout is the protocol.
    sys.stdout = sys.stderr
    model = train()
    batches = inputs = 0
    while (frames := read_batch(stdin)) is not None:
        write_batch(stdout, classify(model, frames))
        batches += 1
        inputs += len(frames)
    log(f"answered {inputs} inputs in {batches} batches (one predict call each); stdin closed")


if __name__ == "__main__":
    try:
        main()
    except (EOFError, ValueError) as e:
        # mqdemo fails the batch in hand with this reason and restarts the model.
        log(f"protocol error: {e}")
        sys.exit(1)
    except BrokenPipeError:
        log("mqdemo closed stdout")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
