"""The installed Pillow resamples training crops as the pinned line does (requirements-common.txt: Pillow 8.1
through 12.x agree; 13.0 does the vertical pass first on some aspect-changing resizes and changes 10-41 of 300
crops of a photo by up to 9 levels). The digest below is the one of Pillow 12.2.0 and 12.3.0; 13.0.0 gives
another (checked side by side), so this test fails there."""
import hashlib
import os
import random

from PIL import Image

from runner import LIT_DATA

PHOTO = os.path.join(LIT_DATA, "train", "n01614925", "imagenet_17.JPEG")
EXPECTED = "6fe9d4275681f0f2f2ea850a21f074d42f63df2efdea22379daa35806b73f658"


def crops_digest(path, n=300, size=224):
    """sha256 over n RandomResizedCrop-like boxes (area 8-100%, aspect 3/4-4/3) of the photo resized to size x
    size, alternately bilinear and bicubic as the recipe's `random` interpolation picks."""
    img = Image.open(path).convert("RGB")
    rng = random.Random(0)
    digest = hashlib.sha256()
    for i in range(n):
        w, h = rng.randint(40, img.width), rng.randint(40, img.height)
        left, top = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
        resample = (Image.BILINEAR, Image.BICUBIC)[i % 2]
        digest.update(img.crop((left, top, left + w, top + h)).resize((size, size), resample).tobytes())
    return digest.hexdigest()


def test_the_installed_pillow_resamples_training_crops_as_the_pinned_line():
    assert crops_digest(PHOTO) == EXPECTED, (f"Pillow {Image.__version__} resamples differently from the pinned "
                                             "line (requirements-common.txt): the training pixels would change")
