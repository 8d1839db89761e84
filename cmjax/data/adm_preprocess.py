"""ADM's ImageNet preprocessing: the full-resolution image to a centered square, as the ADM /
consistency-models reference batches were made.

openai/guided-diffusion (and openai/consistency_models, same code) ``image_datasets.py``
``center_crop_arr``: decode, ``convert("RGB")``; while the short side is >= 2 * size, halve
both sides (``x // 2``) with PIL BOX; then scale by ``size / short side`` with PIL BICUBIC to
``(round(w * scale), round(h * scale))`` (Python's round: half to even); then crop
``size x size`` at offsets ``((h - size) // 2, (w - size) // 2)``. No EXIF rotation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif")  # ADM's list, any case

DESCRIPTION = (
    "ADM center_crop_arr (openai/guided-diffusion image_datasets.py): convert('RGB'); "
    "while min(w, h) >= 2*S: resize((w//2, h//2), BOX); scale = S/min(w, h); "
    "resize((round(w*scale), round(h*scale)), BICUBIC); center crop S x S at "
    "((h-S)//2, (w-S)//2)"
)


def adm_center_crop(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM ``center_crop_arr`` of an RGB PIL image: uint8 (image_size, image_size, 3)."""
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def load_adm_image(path: str | Path, image_size: int) -> np.ndarray:
    """Decode one image file and preprocess it as ADM did: uint8 (S, S, 3)."""
    with Image.open(path) as image:
        image.load()
        rgb = image.convert("RGB")
    return adm_center_crop(rgb, image_size)
