"""The one split of scikit-learn's bundled digits that model.py and write_images.py share.

load_digits ships inside scikit-learn (1,797 8x8 greyscale digits, values 0..16): nothing
is downloaded. The split is fixed (test_size, random_state, stratified), so the model
never trains on a digit that write_images.py sends it.
"""

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

TEST_SIZE = 0.2
RANDOM_STATE = 15
# A digit is 8x8; the PNGs are this many times larger (nearest neighbour).
SCALE = 4
# The data set's largest pixel value.
MAX_VALUE = 16.0


def split():
    """(train_images, test_images, train_labels, test_labels); images are (n, 8, 8)."""
    digits = load_digits()
    return train_test_split(
        digits.images,
        digits.target,
        test_size=TEST_SIZE,
        random_state=RANDOM_STATE,
        stratify=digits.target,
    )


def to_pixels(image):
    """An 8x8 digit (0..16) as 8-bit greyscale pixels (0..255), SCALE times larger."""
    grey = np.rint(np.asarray(image, dtype=float) * (255.0 / MAX_VALUE)).astype(np.uint8)
    return np.kron(grey, np.ones((SCALE, SCALE), dtype=np.uint8))


def features(picture):
    """A Pillow image of a digit (any size or mode) as the model's 64 features (0..16)."""
    small = picture.convert("L").resize((8, 8), resample=Image.Resampling.BOX)
    return np.asarray(small, dtype=float).reshape(64) * (MAX_VALUE / 255.0)

