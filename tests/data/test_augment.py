"""Numpy image augmentations checked against their definitions."""

import numpy as np
import pytest

from jaxkd.data import augment
from jaxkd.data.mixup import Mixup


def _image(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


def test_random_crop_is_a_window_of_the_zero_padded_image():
    image = _image(8, 10)
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    windows = {(dy, dx): padded[dy : dy + 8, dx : dx + 10] for dy in range(5) for dx in range(5)}
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(60):
        crop = augment.random_crop(image, rng, padding=2)
        matches = [k for k, w in windows.items() if np.array_equal(w, crop)]
        assert crop.shape == image.shape and crop.dtype == np.uint8 and matches
        seen.update(matches)
    assert len(seen) > 10  # offsets vary
    np.testing.assert_array_equal(augment.random_crop(image, rng, padding=0), image)


def test_random_flip_flips_about_half_the_time():
    image = _image(4, 6)
    rng = np.random.default_rng(0)
    flips = [augment.random_flip(image, rng) for _ in range(200)]
    flipped = sum(np.array_equal(f, image[:, ::-1]) for f in flips)
    kept = sum(np.array_equal(f, image) for f in flips)
    assert flipped + kept == 200 and 70 < flipped < 130


def test_same_generator_state_gives_the_same_view():
    image = _image(40, 50)
    a = augment.random_resized_crop(image, np.random.default_rng(7), size=16)
    b = augment.random_resized_crop(image, np.random.default_rng(7), size=16)
    c = augment.random_resized_crop(image, np.random.default_rng(8), size=16)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("shape", [(40, 50, 3), (3, 200, 3), (200, 3, 3), (17, 17, 1)])
def test_random_resized_crop_output_size(shape):
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = augment.random_resized_crop(_image(*shape), rng, size=24)
        assert out.shape == (24, 24, shape[-1]) and out.dtype == np.uint8


def test_random_resized_crop_of_a_constant_image_is_constant():
    image = np.full((30, 45, 3), 77, np.uint8)
    out = augment.random_resized_crop(image, np.random.default_rng(0), size=12)
    assert np.all(out == 77)


def test_center_crop_keeps_the_center():
    # Left half 0, right half 255 along the width: the central crop straddles both.
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, 64:] = 255
    out = augment.center_crop(image, size=32, crop_fraction=0.5)
    assert out.shape == (32, 32, 3)
    assert np.all(out[:, :12] == 0) and np.all(out[:, -12:] == 255)
    with pytest.raises(ValueError, match="crop_fraction"):
        augment.center_crop(image, size=32, crop_fraction=0.0)


def test_normalize_formula():
    image = _image(5, 5)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    want = (image.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
    out = augment.normalize(image, mean, std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one value per channel"):
        augment.normalize(image, (0.5,), (0.5,))


def test_images_must_be_hwc():
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        augment.random_crop(np.zeros((4, 4), np.uint8), np.random.default_rng(0))


def test_mixup_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        Mixup(0.0, 10)
    with pytest.raises(ValueError, match="num_classes"):
        Mixup(0.2, 0)


def test_preprocess_recipes_and_validation():
    from jaxkd.data import Preprocess

    image = _image(32, 32)
    cifar = Preprocess(kind="cifar", mean=augment.CIFAR10_MEAN, std=augment.CIFAR10_STD)
    fixed = Preprocess(
        kind="cifar", mean=augment.CIFAR10_MEAN, std=augment.CIFAR10_STD, augment=False
    )
    rng = np.random.default_rng(0)
    assert cifar.is_random and not fixed.is_random
    np.testing.assert_array_equal(fixed.train_view(image, rng), cifar.eval_view(image))
    views = [cifar.train_view(image, rng) for _ in range(5)]
    assert any(not np.array_equal(v, views[0]) for v in views)
    signal = np.arange(40, dtype=np.float64)
    out = Preprocess(kind="identity").train_view(signal, rng)
    assert out.dtype == np.float32 and np.array_equal(out, signal)
    with pytest.raises(ValueError, match="kind"):
        Preprocess(kind="jpeg")
    with pytest.raises(ValueError, match="mean"):
        Preprocess(kind="cifar", mean=(0.5, 0.5, 0.5))
