#!/usr/bin/env python3
"""Generate the mqdemo sample data set under examples/data/.

Run from anywhere:  python3 examples/data/generate.py

Everything is written relative to this file's directory:

    tabular_data.csv              300 rows shaped like the UCI "default of credit
                                  card clients" data set (synthetic values)
    images/...                    6 small PNG/JPEG pictures in nested folders
    texts/...                     4 UTF-8 text files (one with CRLF and no final newline)

Only the Python standard library is used.  PNGs are written with zlib + struct,
JPEGs with the small baseline encoder below (integer DCT, the standard
quantisation and Huffman tables of ITU-T T.81 Annex K).

The output is deterministic: a self-contained pseudo-random generator
(SplitMix64) with a fixed seed drives all randomness, and all pixel maths is
integer or correctly rounded IEEE arithmetic (+ - * / sqrt), so reruns produce
byte-identical files.  (PNG bytes additionally depend on the zlib library
compressing the same way, which classic zlib has done for decades.)
"""

import math
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20240601


# ---------------------------------------------------------------------------
# Deterministic PRNG (independent of the `random` module's implementation)
# ---------------------------------------------------------------------------

class Rng:
    MASK = (1 << 64) - 1

    def __init__(self, seed):
        self.state = seed & self.MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def below(self, n):
        """Uniform integer in [0, n) without modulo bias."""
        if n <= 0:
            raise ValueError("n must be positive")
        limit = (1 << 64) - ((1 << 64) % n)
        while True:
            x = self.next_u64()
            if x < limit:
                return x % n

    def randint(self, a, b):
        return a + self.below(b - a + 1)

    def chance(self, percent_times_10):
        """True with probability percent_times_10 / 1000."""
        return self.below(1000) < percent_times_10

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def weighted(self, items):
        """items: list of (value, integer weight)."""
        total = sum(w for _, w in items)
        r = self.below(total)
        for value, w in items:
            if r < w:
                return value
            r -= w
        raise AssertionError("unreachable")

    def unit(self):
        """Float in [0, 1) built from 53 random bits (exact, deterministic)."""
        return (self.next_u64() >> 11) / float(1 << 53)

    def shuffle(self, seq):
        for i in range(len(seq) - 1, 0, -1):
            j = self.below(i + 1)
            seq[i], seq[j] = seq[j], seq[i]


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def out_path(*parts):
    path = os.path.join(HERE, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def write_bytes(rel, data):
    with open(out_path(*rel.split("/")), "wb") as f:
        f.write(data)


def clamp(v, lo, hi):
    return lo if v < lo else hi if v > hi else v


def to_byte(x):
    """Float in (about) [0, 255] -> int 0..255, rounding half up."""
    return clamp(int(math.floor(x + 0.5)), 0, 255)


def lerp(a, b, t):
    return a + (b - a) * t


def mix(c1, c2, t):
    return tuple(lerp(a, b, t) for a, b in zip(c1, c2))


def smoothstep(t):
    t = clamp(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# ---------------------------------------------------------------------------
# PNG writer
# ---------------------------------------------------------------------------

def _png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    if pb <= pc:
        return b
    return c


def _filter_row(kind, row, prev, bpp):
    out = bytearray(len(row))
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if kind == 0:
            p = 0
        elif kind == 1:
            p = a
        elif kind == 2:
            p = b
        elif kind == 3:
            p = (a + b) >> 1
        else:
            p = _paeth(a, b, c)
        out[i] = (x - p) & 0xFF
    return out


def encode_png(width, height, channels, pixels):
    """pixels: flat list of ints 0..255, row-major, `channels` samples per pixel.

    channels: 1 = greyscale, 3 = RGB, 4 = RGBA (8 bits per sample).
    Each row gets the filter with the smallest sum of absolute signed bytes.
    """
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    stride = width * channels
    assert len(pixels) == stride * height
    raw = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        row = bytearray(pixels[y * stride:(y + 1) * stride])
        best = None
        for kind in range(5):
            f = _filter_row(kind, row, prev, channels)
            score = sum(v if v < 128 else 256 - v for v in f)
            if best is None or score < best[0]:
                best = (score, kind, f)
        raw.append(best[1])
        raw += best[2]
        prev = row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(bytes(raw), 9))
            + _png_chunk(b"IEND", b""))


# ---------------------------------------------------------------------------
# Baseline JPEG encoder (ITU-T T.81; JFIF container)
# ---------------------------------------------------------------------------

ZIGZAG = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
]

# Annex K.1, natural (row-major) order.
LUMA_QT = [
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
]
CHROMA_QT = [
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
] + [99] * 32

# Annex K.3: (BITS, HUFFVAL)
DC_LUMA = ([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], list(range(12)))
DC_CHROMA = ([0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], list(range(12)))
AC_LUMA = ([0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D], [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
    0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5,
    0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2,
    0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
])
AC_CHROMA = ([0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77], [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0,
    0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26,
    0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5,
    0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3,
    0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA,
    0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
])


def _check_tables():
    assert sorted(ZIGZAG) == list(range(64))
    for bits, vals in (DC_LUMA, DC_CHROMA, AC_LUMA, AC_CHROMA):
        assert len(bits) == 16 and sum(bits) == len(vals)
    every_ac = {0x00, 0xF0} | {(run << 4) | size for run in range(16) for size in range(1, 11)}
    for _, vals in (AC_LUMA, AC_CHROMA):
        assert len(vals) == 162 and set(vals) == every_ac


def _huffman_codes(spec):
    """Canonical Huffman codes (Annex C): symbol -> (code, length)."""
    bits, vals = spec
    codes = {}
    code = 0
    k = 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[vals[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


def _scaled_qt(base, quality):
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [clamp((q * scale + 50) // 100, 1, 255) for q in base]


# Orthonormal 8-point DCT-II matrix, as integers scaled by 2**13.  Rounding the
# cosines to integers makes the whole transform exact integer arithmetic.
DCT_SHIFT = 13
DCT = [[int(round((1 << DCT_SHIFT) * 0.5 * (math.sqrt(0.5) if u == 0 else 1.0)
                  * math.cos((2 * x + 1) * u * math.pi / 16)))
        for x in range(8)] for u in range(8)]


def _div_round(n, d):
    """n / d rounded half away from zero (d > 0)."""
    q = (abs(n) + d // 2) // d
    return q if n >= 0 else -q


def _fdct_quantise(block, qt):
    """block: 64 level-shifted samples (row-major). Returns 64 quantised
    coefficients in zig-zag order."""
    tmp = [0] * 64  # rows transformed: tmp[y][u]
    for y in range(8):
        row = block[y * 8:y * 8 + 8]
        for u in range(8):
            c = DCT[u]
            tmp[y * 8 + u] = (c[0] * row[0] + c[1] * row[1] + c[2] * row[2] + c[3] * row[3]
                              + c[4] * row[4] + c[5] * row[5] + c[6] * row[6] + c[7] * row[7])
    out = [0] * 64
    denom_base = 1 << (2 * DCT_SHIFT)
    for v in range(8):
        c = DCT[v]
        for u in range(8):
            s = 0
            for y in range(8):
                s += c[y] * tmp[y * 8 + u]
            out[v * 8 + u] = _div_round(s, qt[v * 8 + u] * denom_base)
    return [out[ZIGZAG[i]] for i in range(64)]


class _BitWriter:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.nbits = 0

    def write(self, value, length):
        if length == 0:
            return
        self.acc = (self.acc << length) | (value & ((1 << length) - 1))
        self.nbits += length
        while self.nbits >= 8:
            self.nbits -= 8
            byte = (self.acc >> self.nbits) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0x00)  # byte stuffing
        self.acc &= (1 << self.nbits) - 1

    def flush(self):
        if self.nbits:
            self.write((1 << (8 - self.nbits)) - 1, 8 - self.nbits)  # pad with 1s


def _magnitude(v):
    size = abs(v).bit_length()
    bits = v if v >= 0 else v + (1 << size) - 1
    return size, bits


def _encode_block(bw, zz, prev_dc, dc_codes, ac_codes):
    diff = zz[0] - prev_dc
    size, bits = _magnitude(diff)
    assert size <= 11, "DC difference out of range"
    code, length = dc_codes[size]
    bw.write(code, length)
    bw.write(bits, size)
    run = 0
    for k in range(1, 64):
        v = zz[k]
        if v == 0:
            run += 1
            continue
        while run > 15:
            code, length = ac_codes[0xF0]
            bw.write(code, length)
            run -= 16
        size, bits = _magnitude(v)
        assert 1 <= size <= 10, "AC coefficient out of range"
        code, length = ac_codes[(run << 4) | size]
        bw.write(code, length)
        bw.write(bits, size)
        run = 0
    if run:
        code, length = ac_codes[0x00]
        bw.write(code, length)
    return zz[0]


def _segment(marker, payload):
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def _pad_plane(plane, w, h, pw, ph):
    """Extend a w*h plane to pw*ph by replicating the last column / row."""
    out = []
    for y in range(ph):
        row = plane[min(y, h - 1) * w:min(y, h - 1) * w + w]
        out.extend(row)
        out.extend([row[-1]] * (pw - w))
    return out


def _block(plane, pw, bx, by):
    return [plane[(by + y) * pw + bx + x] - 128 for y in range(8) for x in range(8)]


def encode_jpeg(width, height, pixels, channels, quality=90, subsampling="420"):
    """pixels: flat list, row-major; channels 1 (grey) or 3 (RGB).
    subsampling (RGB only): "444" or "420"."""
    _check_tables()
    assert channels in (1, 3) and len(pixels) == width * height * channels
    lqt = _scaled_qt(LUMA_QT, quality)
    cqt = _scaled_qt(CHROMA_QT, quality)
    dc_l, ac_l = _huffman_codes(DC_LUMA), _huffman_codes(AC_LUMA)
    dc_c, ac_c = _huffman_codes(DC_CHROMA), _huffman_codes(AC_CHROMA)

    if channels == 1:
        planes = [list(pixels)]
        sampling = [(1, 1)]
    else:
        ys, cbs, crs = [], [], []
        for i in range(0, len(pixels), 3):
            r, g, b = pixels[i], pixels[i + 1], pixels[i + 2]
            # JFIF YCbCr, 16.16 fixed point.
            ys.append((19595 * r + 38470 * g + 7471 * b + 32768) >> 16)
            cbs.append(clamp((-11059 * r - 21709 * g + 32768 * b + (128 << 16) + 32768) >> 16, 0, 255))
            crs.append(clamp((32768 * r - 27439 * g - 5329 * b + (128 << 16) + 32768) >> 16, 0, 255))
        planes = [ys, cbs, crs]
        sampling = [(2, 2), (1, 1), (1, 1)] if subsampling == "420" else [(1, 1)] * 3

    hmax = max(h for h, _ in sampling)
    vmax = max(v for _, v in sampling)
    mcu_w, mcu_h = 8 * hmax, 8 * vmax
    mcus_x = (width + mcu_w - 1) // mcu_w
    mcus_y = (height + mcu_h - 1) // mcu_h
    pw, ph = mcus_x * mcu_w, mcus_y * mcu_h

    comps = []  # (padded plane at component resolution, plane width, h, v)
    for plane, (hs, vs) in zip(planes, sampling):
        full = _pad_plane(plane, width, height, pw, ph)
        fx, fy = hmax // hs, vmax // vs
        if fx == 1 and fy == 1:
            comps.append((full, pw, hs, vs))
            continue
        cw, ch = pw // fx, ph // fy
        n = fx * fy
        sub = []
        for y in range(ch):
            for x in range(cw):
                s = 0
                for dy in range(fy):
                    base = (y * fy + dy) * pw + x * fx
                    for dx in range(fx):
                        s += full[base + dx]
                sub.append((s + n // 2) // n)
        comps.append((sub, cw, hs, vs))

    tables = [(lqt, dc_l, ac_l)] + [(cqt, dc_c, ac_c)] * (len(comps) - 1)
    bw = _BitWriter()
    prev_dc = [0] * len(comps)
    for my in range(mcus_y):
        for mx in range(mcus_x):
            for ci, (plane, cw, hs, vs) in enumerate(comps):
                qt, dcc, acc = tables[ci]
                for by in range(vs):
                    for bx in range(hs):
                        blk = _block(plane, cw, (mx * hs + bx) * 8, (my * vs + by) * 8)
                        zz = _fdct_quantise(blk, qt)
                        prev_dc[ci] = _encode_block(bw, zz, prev_dc[ci], dcc, acc)
    bw.flush()

    out = bytearray(b"\xFF\xD8")
    out += _segment(0xFFE0, b"JFIF\x00" + struct.pack(">BBBHHBB", 1, 1, 0, 1, 1, 0, 0))
    dqt = bytes([0x00]) + bytes(lqt[ZIGZAG[i]] for i in range(64))
    if len(comps) > 1:
        dqt += bytes([0x01]) + bytes(cqt[ZIGZAG[i]] for i in range(64))
    out += _segment(0xFFDB, dqt)
    sof = struct.pack(">BHHB", 8, height, width, len(comps))
    for ci, (_, _, hs, vs) in enumerate(comps):
        sof += bytes([ci + 1, (hs << 4) | vs, 0 if ci == 0 else 1])
    out += _segment(0xFFC0, sof)
    dht = b""
    specs = [(0x00, DC_LUMA), (0x10, AC_LUMA)]
    if len(comps) > 1:
        specs += [(0x01, DC_CHROMA), (0x11, AC_CHROMA)]
    for cls_id, (bits, vals) in specs:
        dht += bytes([cls_id]) + bytes(bits) + bytes(vals)
    out += _segment(0xFFC4, dht)
    sos = bytes([len(comps)])
    for ci in range(len(comps)):
        sos += bytes([ci + 1, 0x00 if ci == 0 else 0x11])
    sos += bytes([0, 63, 0])
    out += _segment(0xFFDA, sos)
    out += bw.out
    out += b"\xFF\xD9"
    return bytes(out)


# ---------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------

def render(width, height, shade, ss=3):
    """Supersampled renderer: shade(x, y) -> tuple of floats (0..255) for a
    point in pixel coordinates.  Returns a flat list of bytes."""
    pixels = []
    inv = 1.0 / ss
    for py in range(height):
        for px in range(width):
            acc = None
            for sy in range(ss):
                for sx in range(ss):
                    c = shade(px + (sx + 0.5) * inv, py + (sy + 0.5) * inv)
                    acc = list(c) if acc is None else [a + b for a, b in zip(acc, c)]
            pixels.extend(to_byte(a / (ss * ss)) for a in acc)
    return pixels


def in_triangle(x, y, a, b, c):
    def side(p, q):
        return (q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0])
    d1, d2, d3 = side(a, b), side(b, c), side(c, a)
    neg = d1 < 0 or d2 < 0 or d3 < 0
    pos = d1 > 0 or d2 > 0 or d3 > 0
    return not (neg and pos)


def near_segment(x, y, a, b, half_width):
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    t = clamp(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    ex, ey = ax + t * dx - x, ay + t * dy - y
    return ex * ex + ey * ey <= half_width * half_width


def cat_like(width=92, height=70):
    """A cartoon cat face on a sky-to-grass background."""
    cx, cy = width * 0.5, height * 0.58
    fur, fur_dark = (232.0, 146.0, 58.0), (190.0, 100.0, 30.0)
    inner_ear = (245.0, 182.0, 170.0)

    def shade(x, y):
        t = y / height
        col = mix((120.0, 180.0, 235.0), (200.0, 228.0, 250.0), t / 0.75) if t < 0.75 \
            else mix((110.0, 170.0, 80.0), (70.0, 130.0, 50.0), (t - 0.75) / 0.25)
        left_ear = ((cx - 28, cy - 8), (cx - 22, cy - 36), (cx - 6, cy - 20))
        right_ear = ((cx + 28, cy - 8), (cx + 22, cy - 36), (cx + 6, cy - 20))
        for ear in (left_ear, right_ear):
            if in_triangle(x, y, *ear):
                col = fur_dark
                (ox, oy), (tx, ty), (ix, iy) = ear
                inner = ((ox * 0.7 + ix * 0.3, oy - 2), (tx, ty + 7), (ix, iy + 1))
                if in_triangle(x, y, *inner):
                    col = inner_ear
        hx, hy = (x - cx) / 29.0, (y - cy) / 23.0
        if hx * hx + hy * hy <= 1.0:
            stripe = (int((x - cx + 40) / 5) % 2 == 0) and y < cy - 12
            col = fur_dark if stripe else fur
            mx, my = (x - cx) / 14.0, (y - (cy + 9)) / 8.0
            if mx * mx + my * my <= 1.0:
                col = (250.0, 236.0, 214.0)  # muzzle
            for ex in (cx - 11, cx + 11):
                ox, oy = (x - ex) / 5.5, (y - (cy - 3)) / 4.5
                if ox * ox + oy * oy <= 1.0:
                    col = (120.0, 190.0, 70.0)  # iris
                    px = (x - ex) / 1.6
                    if px * px + oy * oy <= 1.0:
                        col = (15.0, 15.0, 20.0)  # slit pupil
                    gx, gy = x - (ex + 1.8), y - (cy - 4.8)
                    if gx * gx + gy * gy <= 1.0:
                        col = (255.0, 255.0, 255.0)  # glint
            if in_triangle(x, y, (cx - 3.5, cy + 5), (cx + 3.5, cy + 5), (cx, cy + 8.5)):
                col = (225.0, 110.0, 130.0)  # nose
            mouth = [((cx, cy + 8.5), (cx, cy + 12))]
            for sgn in (-1, 1):  # a little "w" shaped smile
                mouth += [((cx, cy + 12), (cx + sgn * 2.2, cy + 13.6)),
                          ((cx + sgn * 2.2, cy + 13.6), (cx + sgn * 4.8, cy + 12))]
            if any(near_segment(x, y, a, b, 0.5) for a, b in mouth):
                col = (90.0, 50.0, 40.0)  # mouth
        for sgn in (-1, 1):
            for dy in (-2.0, 1.0, 4.0):
                a = (cx + sgn * 9, cy + 9 + dy * 0.5)
                b = (cx + sgn * 40, cy + 5 + dy * 1.8)
                if near_segment(x, y, a, b, 0.35):
                    col = (60.0, 45.0, 40.0)  # whiskers
        return col

    return width, height, render(width, height, shade)


def gradient(width=64, height=48):
    """Bilinear four-corner gradient with a faint diagonal sheen."""
    tl, tr = (230.0, 40.0, 60.0), (250.0, 200.0, 40.0)
    bl, br = (40.0, 80.0, 220.0), (40.0, 200.0, 120.0)

    def shade(x, y):
        u, v = x / width, y / height
        top, bottom = mix(tl, tr, u), mix(bl, br, u)
        c = mix(top, bottom, v)
        d = abs((u + v) - 1.0)
        sheen = 30.0 * (1.0 - smoothstep(d / 0.25))
        return tuple(min(255.0, ch + sheen) for ch in c)

    return width, height, render(width, height, shade, ss=2)


def circle_rgba(width=40, height=40):
    """An anti-aliased blue disc with a white ring on a transparent background
    (alpha varies at the edges; RGB is kept un-premultiplied)."""
    cx, cy, r = width / 2.0, height / 2.0, 17.0
    ss = 4
    pixels = []
    for py in range(height):
        for px in range(width):
            cover = ring = 0
            for sy in range(ss):
                for sx in range(ss):
                    x = px + (sx + 0.5) / ss
                    y = py + (sy + 0.5) / ss
                    d = math.sqrt((x - cx) ** 2 + (y - cy) ** 2)
                    if d <= r:
                        cover += 1
                        if r - 3.0 <= d <= r - 1.5:
                            ring += 1
            if cover == 0:
                pixels.extend((0, 0, 0, 0))
                continue
            t = ring / cover
            # radial shading of the disc body
            d0 = math.sqrt((px + 0.5 - cx + 5) ** 2 + (py + 0.5 - cy + 5) ** 2) / (r + 6)
            body = mix((110.0, 170.0, 255.0), (20.0, 60.0, 170.0), clamp(d0, 0.0, 1.0))
            col = mix(body, (255.0, 255.0, 255.0), t)
            pixels.extend([to_byte(c) for c in col] + [to_byte(255.0 * cover / (ss * ss))])
    return width, height, pixels


def squares(width=72, height=56):
    """Overlapping coloured squares on an off-white background."""
    boxes = [  # (x0, y0, size, colour)
        (4, 5, 26, (220.0, 50.0, 47.0)),
        (18, 14, 22, (38.0, 139.0, 210.0)),
        (40, 6, 28, (133.0, 153.0, 0.0)),
        (30, 30, 20, (181.0, 137.0, 0.0)),
        (52, 36, 16, (108.0, 113.0, 196.0)),
        (8, 38, 14, (42.0, 161.0, 152.0)),
    ]

    def shade(x, y):
        col = (250.0, 246.0, 235.0)
        for x0, y0, s, c in boxes:
            if x0 <= x < x0 + s and y0 <= y < y0 + s:
                border = min(x - x0, x0 + s - x, y - y0, y0 + s - y) < 1.5
                col = (30.0, 30.0, 30.0) if border else c
        return col

    return width, height, render(width, height, shade, ss=2)


def value_noise(rng, width, height):
    """Grey 'cloudy landscape': fractal value noise plus a little grain."""
    octaves = []
    for cell in (32, 16, 8, 4):
        gw, gh = width // cell + 2, height // cell + 2
        grid = [rng.unit() for _ in range(gw * gh)]
        octaves.append((cell, gw, grid))
    pixels = []
    for y in range(height):
        for x in range(width):
            total, amp, norm = 0.0, 1.0, 0.0
            for cell, gw, grid in octaves:
                fx, fy = x / cell, y / cell
                ix, iy = int(fx), int(fy)
                tx, ty = smoothstep(fx - ix), smoothstep(fy - iy)
                a = grid[iy * gw + ix]
                b = grid[iy * gw + ix + 1]
                c = grid[(iy + 1) * gw + ix]
                d = grid[(iy + 1) * gw + ix + 1]
                total += amp * lerp(lerp(a, b, tx), lerp(c, d, tx), ty)
                norm += amp
                amp *= 0.5
            v = total / norm
            horizon = smoothstep((y / height - 0.35) / 0.4)
            v = 40.0 + 170.0 * v * (0.6 + 0.4 * horizon) + 30.0 * (1.0 - horizon)
            v += (rng.below(17) - 8)  # grain
            pixels.append(to_byte(v))
    return width, height, pixels


def stripes_grey(width=50, height=30):
    """Anti-aliased diagonal stripes, 8-bit greyscale."""
    period = 9.0

    def shade(x, y):
        p = ((x + 0.6 * y) % period) / period  # 0..1 along the stripe period
        tri = abs(2.0 * p - 1.0)  # triangle wave
        return (30.0 + 200.0 * smoothstep((tri - 0.45) / 0.1),)

    return width, height, render(width, height, shade, ss=4)


def write_images(rng):
    made = []
    w, h, px = cat_like()
    write_bytes("images/cat_like.jpg", encode_jpeg(w, h, px, 3, quality=90, subsampling="420"))
    made.append(("images/cat_like.jpg", w, h))
    w, h, px = gradient()
    write_bytes("images/gradient.png", encode_png(w, h, 3, px))
    made.append(("images/gradient.png", w, h))
    w, h, px = circle_rgba()
    write_bytes("images/shapes/circle.png", encode_png(w, h, 4, px))
    made.append(("images/shapes/circle.png", w, h))
    w, h, px = squares()
    write_bytes("images/shapes/squares.jpg", encode_jpeg(w, h, px, 3, quality=92, subsampling="444"))
    made.append(("images/shapes/squares.jpg", w, h))
    w, h, px = value_noise(rng, 128, 96)
    write_bytes("images/photos/noise.jpg", encode_jpeg(w, h, px, 1, quality=85))
    made.append(("images/photos/noise.jpg", w, h))
    w, h, px = stripes_grey()
    write_bytes("images/photos/stripes.png", encode_png(w, h, 1, px))
    made.append(("images/photos/stripes.png", w, h))
    return made


# ---------------------------------------------------------------------------
# Tabular data (shaped like UCI "default of credit card clients")
# ---------------------------------------------------------------------------

CSV_HEADER = ("ID,LIMIT_BAL,SEX,EDUCATION,MARRIAGE,AGE,PAY_0,PAY_2,PAY_3,PAY_4,PAY_5,PAY_6,"
              "BILL_AMT1,BILL_AMT2,BILL_AMT3,BILL_AMT4,BILL_AMT5,BILL_AMT6,"
              "PAY_AMT1,PAY_AMT2,PAY_AMT3,PAY_AMT4,PAY_AMT5,PAY_AMT6,default.payment.next.month")


def credit_row(rng, ident, defaulted):
    limit = 10000 * rng.weighted([
        (rng.randint(1, 5), 30), (rng.randint(6, 20), 40),
        (rng.randint(21, 40), 22), (rng.randint(41, 80), 8)])
    sex = rng.weighted([(1, 40), (2, 60)])
    education = rng.weighted([(1, 35), (2, 47), (3, 16), (4, 2)])
    age = 21 + rng.below(10) + rng.below(10) + rng.below(10)  # mostly mid-20s to 40s
    if rng.chance(120):
        age = rng.randint(45, 75)
    marriage = rng.weighted([(1, 70 if age >= 35 else 25), (2, 28 if age >= 35 else 74), (3, 2)])

    # Repayment status, oldest month (April, PAY_6) first.
    # -2: no consumption, -1: paid in full, 0: revolving credit, k>0: k months late.
    style = rng.weighted([("inactive", 8), ("transactor", 22), ("revolver", 52), ("late", 18)])
    if defaulted and style != "late" and rng.chance(550):
        style = "late"
    statuses = []
    s = {"inactive": -2, "transactor": -1, "revolver": 0, "late": rng.randint(0, 2)}[style]
    for month in range(6):
        if style == "late":
            if s > 0 and rng.chance(650):
                s = min(8, s + 1)          # missed again: one month later
            elif s > 0 and rng.chance(500):
                s = 0 if rng.chance(600) else -1
            elif s <= 0 and rng.chance(350):
                s = rng.randint(1, 2)
        elif style == "revolver" and rng.chance(80):
            s = rng.choice([-1, 0, 1, 2]) if s != 2 else 3
        elif rng.chance(60):
            s = rng.choice([-2, -1, 0])
        statuses.append(s)
    if defaulted and statuses[-1] <= 0 and rng.chance(450):
        statuses[-1] = rng.randint(1, 2)
    pay = list(reversed(statuses))  # PAY_0 (September) ... PAY_6 (April)

    # Bills and payments, oldest month first.
    bills_old_first, pays_old_first = [], []
    util = {"inactive": 0, "transactor": rng.randint(2, 20),
            "revolver": rng.randint(20, 95), "late": rng.randint(60, 105)}[style]
    bill = limit * util // 100
    for st in statuses:
        if st == -2:
            bill = 0 if rng.chance(700) else rng.randint(1, 3000)
        elif st == -1:
            bill = max(0, limit * rng.randint(1, 25) // 100 + rng.randint(-900, 900))
        else:
            bill = max(0, bill + bill * rng.randint(-6, 8) // 100 + rng.randint(-1500, 2500))
            bill = min(bill, limit * 110 // 100)
        shown = bill
        if rng.chance(15):
            shown = -rng.randint(1, 4000)  # an overpayment left a credit balance
        bills_old_first.append(shown)
    prev_bill = bills_old_first[0] * rng.randint(85, 115) // 100
    for st, b in zip(statuses, bills_old_first):
        owed = max(prev_bill, 0)
        if st == -2:
            p = 0 if rng.chance(600) else rng.randint(0, 2000)
        elif st == -1:
            p = owed
        elif st == 0:
            p = owed * rng.randint(3, 12) // 100 + rng.randint(0, 800)
        else:
            p = 0 if rng.chance(550) else owed * rng.randint(1, 5) // 100
        if owed and rng.chance(40):
            p = owed + rng.randint(0, 5000)  # the occasional lump-sum payment
        pays_old_first.append(max(0, p))
        prev_bill = b
    bills = list(reversed(bills_old_first))
    pays = list(reversed(pays_old_first))
    values = [ident, limit, sex, education, marriage, age] + pay + bills + pays + [1 if defaulted else 0]
    for v in values:
        assert isinstance(v, int)
    return ",".join(str(v) for v in values)


def write_csv(rng, rows=300, default_percent=22):
    n_default = round(rows * default_percent / 100)
    flags = [True] * n_default + [False] * (rows - n_default)
    rng.shuffle(flags)
    lines = [CSV_HEADER] + [credit_row(rng, i + 1, flags[i]) for i in range(rows)]
    write_bytes("tabular_data.csv", ("\n".join(lines) + "\n").encode("ascii"))
    return rows, n_default


# ---------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------

PRODUCTS = ["wireless kettle", "trail running shoes", "desk lamp", "espresso grinder",
            "noise-cancelling headphones", "hiking backpack", "robot vacuum",
            "cast-iron skillet", "mechanical keyboard", "smart thermostat",
            "folding bike", "air purifier", "electric toothbrush", "camping stove"]
NAMES = ["Alex", "Priya", "Jordan", "Mei", "Tomás", "Fatima", "Sam", "Ines", "Kwame",
         "Olga", "Ravi", "Hannah", "Lucas", "Aiko", "Noah", "Zara"]

POS_OPEN = [
    "I bought the {p} three weeks ago and it has exceeded my expectations.",
    "The {p} arrived two days early and was packed with care.",
    "After reading plenty of reviews I finally ordered the {p}, and I am glad I did.",
    "This is the second {p} I have owned and it is easily the better one.",
    "My partner surprised me with the {p} and we now argue over who gets to use it.",
]
POS_BODY = [
    "Setup took less than ten minutes and the instructions were clear.",
    "Build quality feels solid without being heavy.",
    "It is quieter than I expected, even on the highest setting.",
    "It has held up perfectly to a month of daily use.",
    "The finish still looks new after plenty of use.",
    "Customer support answered my question within an hour.",
    "It does exactly what the description promises and nothing feels like an afterthought.",
    "The controls are simple enough that my kids figured them out on their own.",
    "For the price, I honestly cannot think of a better option.",
    "Cleaning it is quick, which means I actually do it.",
]
POS_CLOSE = [
    "Five stars, would buy again.",
    "Highly recommended.",
    "I have already ordered one as a gift.",
    "Worth every penny.",
    "A small luxury that makes every day a little easier.",
]

NEG_OPEN = [
    "I wanted to like the {p}, but it has been a disappointment.",
    "The {p} stopped working properly after only eleven days.",
    "I returned the {p} within a week.",
    "The {p} looks great in the photos; in person, not so much.",
    "Unfortunately the {p} did not live up to the hype.",
]
NEG_BODY = [
    "The box arrived dented and one of the screws was missing.",
    "It rattles loudly whenever it runs for more than a few minutes.",
    "It started making a grinding noise by the end of the first week.",
    "The instructions are printed in tiny grey text that is almost unreadable.",
    "The plastic clip snapped the second time I used it.",
    "Support took nine days to reply and then sent a generic template.",
    "The manual contradicts itself about how to reset the device.",
    "It gets uncomfortably hot near the power button.",
    "The colour is noticeably different from the listing.",
    "Replacement parts are not sold anywhere I could find.",
]
NEG_CLOSE = [
    "One star, and only because zero is not an option.",
    "Save your money.",
    "I would not recommend it.",
    "Very frustrating experience overall.",
    "Two stars for the nice packaging, nothing more.",
]


def review_file(rng, title, opens, bodies, closes, stars, count):
    lines = [title, "=" * len(title), ""]
    for i in range(count):
        product = rng.choice(PRODUCTS)
        body = list(bodies)
        rng.shuffle(body)
        text = " ".join([rng.choice(opens).format(p=product)] + body[:rng.randint(2, 4)]
                        + [rng.choice(closes)])
        star = rng.choice(stars)
        day = rng.randint(1, 28)
        month = rng.randint(1, 12)
        lines.append("Review {:03d} | {} | {} | 2024-{:02d}-{:02d} | {} star{}".format(
            i + 1, rng.choice(NAMES), product, month, day, star, "" if star == 1 else "s"))
        lines.append(text)
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


MULTILINGUAL = """\
Multilingual sensor log / Journal multilingue / 多言語ログ
=======================================================

en: Sensor 7 reports 21.5 °C and 45 % humidity; all readings nominal.
fr: Le capteur nº 7 indique 21,5 °C ; café crème à 10 h, déjà prêt.
de: Grüße aus München! Die Straße ist nass, Temperatur −3 °C, Öl prüfen.
es: El niño comió piña en el año pasado; la señal es estable.
pt: A instalação do sensor foi concluída sem atenção especial.
pl: Zażółć gęślą jaźń — czujnik działa poprawnie.
sv: Övervakningen på Åland är klar, på återseende.
tr: Sıcaklık ölçümü başarılı; İstanbul'dan selamlar.
el: Ο αισθητήρας λειτουργεί κανονικά. Καλημέρα!
ru: Датчик работает нормально, температура 21,5 °C.
uk: Ґанок сухий, їжак спить, все гаразд.
ar: المستشعر يعمل بشكل طبيعي
he: החיישן פועל כרגיל
hi: सेंसर ठीक से काम कर रहा है।
ja: こんにちは、世界。センサーの温度は正常です。
zh: 传感器读数正常，湿度为百分之四十五。
zh-Hant: 感測器讀數正常，濕度為百分之四十五。
ko: 안녕하세요! 센서가 정상적으로 작동합니다.
th: เซ็นเซอร์ทำงานปกติ
emoji: 🐇 📦 ✅ 🚀 🌡️ 👩‍💻 🇯🇵
math: ∑ x² ≤ ∞, α ≠ β, ½ + ¼ = ¾, 5 µs, 3 × 4 ÷ 2
quotes: “curly”, ‘single’, «guillemets», „low-high“, ellipsis…
combining: cafe\u0301 (e + U+0301) vs café (precomposed U+00E9)
"""

SENSORS = ["boiler-room", "greenhouse-2", "cold-store", "roof-east", "server-rack-4",
           "loading-dock", "lab-b", "attic"]
EVENTS = [
    "temperature {t:.1f} C, humidity {h} %, battery {b} %; all nominal",
    "door opened for {s} s; temperature dipped to {t:.1f} C",
    "humidity spike to {h} % after cleaning; will re-check in 1 h",
    "battery at {b} %, schedule replacement this week",
    "vibration above threshold for {s} s, fan bearing suspected",
    "reading skipped (checksum mismatch), retried OK",
    "calibrated against reference probe, offset {o:+.1f} C",
    "firmware updated, reboot took {s} s",
]


def crlf_notes(rng, count=24):
    lines = ["Field notes, sensor round (CRLF line endings, no final newline)"]
    for i in range(count):
        hour, minute = 6 + i // 3, (i * 20 + rng.randint(0, 9)) % 60
        event = rng.choice(EVENTS).format(
            t=rng.randint(-80, 320) / 10.0, h=rng.randint(18, 92), b=rng.randint(5, 100),
            s=rng.randint(3, 240), o=rng.randint(-9, 9) / 10.0)
        lines.append("2024-03-14 {:02d}:{:02d} [{}] {}".format(hour, minute, rng.choice(SENSORS), event))
    lines.append("End of round: all sensors visited, nothing left open.")
    return "\r\n".join(lines)  # deliberately no trailing CRLF


def write_texts(rng):
    pos = review_file(rng, "Customer reviews: positive", POS_OPEN, POS_BODY, POS_CLOSE,
                      [4, 5, 5], 18)
    neg = review_file(rng, "Customer reviews: negative", NEG_OPEN, NEG_BODY, NEG_CLOSE,
                      [1, 1, 2], 15)
    write_bytes("texts/review_positive.txt", pos.encode("utf-8"))
    write_bytes("texts/review_negative.txt", neg.encode("utf-8"))
    write_bytes("texts/notes/multilingual.txt", MULTILINGUAL.encode("utf-8"))
    notes = crlf_notes(rng)
    assert "\n" not in notes.replace("\r\n", "") and not notes.endswith("\n")
    write_bytes("texts/notes/crlf_lines.txt", notes.encode("utf-8"))


# ---------------------------------------------------------------------------

def main():
    # Independent streams, so changing one output does not reshuffle the others.
    rows, n_default = write_csv(Rng(SEED))
    images = write_images(Rng(SEED + 1))
    write_texts(Rng(SEED + 2))
    print("wrote tabular_data.csv: {} rows, {} defaults".format(rows, n_default))
    for rel, w, h in images:
        print("wrote {}: {}x{}".format(rel, w, h))
    print("wrote texts/ (4 files)")


if __name__ == "__main__":
    main()
