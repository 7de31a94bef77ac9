"""Per-example image augmentation in numpy (resizing with Pillow), no TensorFlow.

Every random function takes a `np.random.Generator`; the pipeline seeds it from
(seed, epoch, example index), so a resumed run draws exactly the same views. Images are
`uint8` [H, W, C] until `normalize`, which returns float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

# Standard per-channel statistics (of the training sets, in [0, 1] pixel units).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_image(image: np.ndarray, name: str = "image") -> None:
    if image.ndim != 3:
        raise ValueError(
            f"`{name}` must be an [H, W, C] image, got shape {image.shape} and dtype {image.dtype}."
        )


def random_crop(image: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
    """Zero-pads `padding` pixels on each side, then crops back to the input size.

    out = pad(image, padding)[dy:dy + H, dx:dx + W],  dy, dx ~ U{0, ..., 2·padding}

    Args:
      image: [H, W, C] image.
      rng: random generator.
      padding: pixels of zero padding on each side.

    Returns:
      The [H, W, C] crop, same dtype.

    References: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016
    (CIFAR augmentation; torchvision `RandomCrop(32, padding=4)` as in RepDistiller).
    """
    _check_image(image)
    if padding < 0:
        raise ValueError(f"`padding` must be >= 0, got {padding}.")
    h, w, _ = image.shape
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    dy, dx = rng.integers(0, 2 * padding + 1, size=2)
    return padded[dy : dy + h, dx : dx + w]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips `image` left-right with probability 1/2.

    Args:
      image: [H, W, C] image.
      rng: random generator.

    Returns:
      The image, flipped or not.

    References: Krizhevsky et al., "ImageNet Classification with Deep Convolutional
    Neural Networks", NeurIPS 2012.
    """
    _check_image(image)
    return image[:, ::-1] if rng.random() < 0.5 else image


def _resize(image: np.ndarray, size: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """Resizes the `box` (left, top, right, bottom) of `image` to `size` = (height, width)."""
    squeeze = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(
        pil.resize((size[1], size[0]), resample=Image.Resampling.BILINEAR, box=tuple(box))
    )
    return out[..., None] if squeeze else out


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> np.ndarray:
    """Crops a random area and aspect ratio of `image` and resizes it to `size`×`size`.

    area ~ U(scale)·H·W, log(aspect) ~ U(log ratio); after `attempts` crops that do not
    fit, falls back to the largest central crop with an aspect ratio inside `ratio`.

    Args:
      image: [H, W, C] uint8 image of any size.
      rng: random generator.
      size: output height and width.
      scale: range of the crop's area as a fraction of the image's.
      ratio: range of the crop's width/height.
      attempts: tries before the central fallback.

    Returns:
      The [size, size, C] uint8 crop (bilinear resize).

    References: Szegedy et al., "Going Deeper with Convolutions", CVPR 2015 (the
    "Inception crop"; torchvision `RandomResizedCrop` defaults).
    """
    _check_image(image)
    h, w, _ = image.shape
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = round(math.sqrt(target_area * aspect))
        ch = round(math.sqrt(target_area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return _resize(image, (size, size), (left, top, left + cw, top + ch))
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif aspect > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    return _resize(image, (size, size), (left, top, left + cw, top + ch))


def center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
    """Resizes the shorter side to `size / crop_fraction`, then crops the central square.

    With size 224 and the default fraction this is the usual ImageNet evaluation view
    (resize to 256, center crop 224).

    Args:
      image: [H, W, C] uint8 image of any size.
      size: output height and width.
      crop_fraction: fraction of the resized shorter side that the crop keeps.

    Returns:
      The [size, size, C] uint8 crop.

    References: Krizhevsky et al., NeurIPS 2012; torchvision `Resize(256)`,
    `CenterCrop(224)`.
    """
    _check_image(image)
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"`crop_fraction` must be in (0, 1], got {crop_fraction}.")
    h, w, _ = image.shape
    short = round(size / crop_fraction)
    if h <= w:
        new_h, new_w = short, max(short, round(w * short / h))
    else:
        new_h, new_w = max(short, round(h * short / w)), short
    resized = _resize(image, (new_h, new_w), (0, 0, w, h))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Scales uint8 pixels to [0, 1] and standardises each channel.

    out = (image / 255 − mean) / std

    Args:
      image: [..., C] uint8 (or float in [0, 255]) image.
      mean: per-channel mean in [0, 1] units, length C.
      std: per-channel standard deviation in [0, 1] units, length C.

    Returns:
      The float32 image.

    References: standard practice (e.g. torchvision `Normalize`).
    """
    if len(mean) != image.shape[-1] or len(std) != image.shape[-1]:
        raise ValueError(
            f"`mean` and `std` must have one value per channel ({image.shape[-1]} for image "
            f"shape {image.shape}), got {len(mean)} and {len(std)}."
        )
    scale = np.float32(1 / 255)
    out = image.astype(np.float32) * scale
    return (out - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
