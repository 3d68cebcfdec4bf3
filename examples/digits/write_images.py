"""Write the held-out digits (digits_split.py) as PNG files for `mqdemo produce image`.

    python write_images.py OUT_DIR

Each file is named test_<index>_label<digit>.png (e.g. test_0042_label7.png), so whoever
checks the model's answers can read the true label from the `source` header; the picture
is the 8x8 digit in 8-bit grey, digits_split.SCALE times larger. Prints the number of
files written on stdout.
"""

import os
import sys

from PIL import Image

import digits_split


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: python write_images.py OUT_DIR")
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    _, images, _, labels = digits_split.split()
    for i, (image, label) in enumerate(zip(images, labels)):
        path = os.path.join(out, f"test_{i:04d}_label{int(label)}.png")
        Image.fromarray(digits_split.to_pixels(image), mode="L").save(path)
    print(len(images))


if __name__ == "__main__":
    main(sys.argv)
