"""How the examples of one dataset become model inputs: training and evaluation views.

`Preprocess.for_dataset` gives the standard recipe of each family:

| family   | training view                                        | evaluation view       |
|----------|------------------------------------------------------|-----------------------|
| mnist1d  | the signal, float32 [40]                             | same                  |
| cifar    | zero-pad 4 + random 32×32 crop + flip, normalise     | normalise             |
| imagenet | random-resized crop 224 + flip, normalise            | resize 256, center 224|
| generic  | images scaled to [0, 1]; other inputs cast to float32 | same                 |

Normalisation uses the standard per-channel mean/std of CIFAR-10, CIFAR-100 or ImageNet.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from jaxkd.data import augment
from jaxkd.data.sources import DatasetSpec

Kind = Literal["identity", "cifar", "imagenet", "image"]
KINDS = ("identity", "cifar", "imagenet", "image")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """A dataset's training and evaluation views (numpy, per example).

    Attributes:
      kind: "identity" (cast to float32), "cifar" (pad-and-crop + flip), "imagenet"
        (random-resized crop + flip; resize and center crop to evaluate) or "image"
        (optional flip only).
      mean: per-channel mean in [0, 1] units (images only; None leaves pixels in [0, 1]).
      std: per-channel standard deviation in [0, 1] units (images only).
      augment: False makes the training view equal the evaluation view.
      flip: random left-right flips in the training view (images only).
      crop_padding: zero padding of the CIFAR crop.
      image_size: output size of the ImageNet crops.
      crop_scale: area range of the random-resized crop.
      crop_fraction: fraction of the resized image kept by the ImageNet center crop.
    """

    kind: Kind = "identity"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = True
    flip: bool = True
    crop_padding: int = 4
    image_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_fraction: float = 0.875

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {self.kind!r}.")
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"`mean` and `std` go together, got {self.mean=} {self.std=}.")

    @classmethod
    def for_dataset(cls, spec: DatasetSpec, **overrides) -> Preprocess:
        """The standard recipe for `spec`'s family, with fields replaced by `overrides`."""
        base = spec.name.split("/")[0].split(":")[0]
        if spec.family == "mnist1d":
            recipe = cls(kind="identity")
        elif spec.family == "cifar":
            stats = (
                (augment.CIFAR100_MEAN, augment.CIFAR100_STD)
                if base == "cifar100"
                else (augment.CIFAR10_MEAN, augment.CIFAR10_STD)
            )
            recipe = cls(kind="cifar", mean=stats[0], std=stats[1])
        elif spec.family == "imagenet":
            recipe = cls(kind="imagenet", mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD)
        elif len(spec.input_shape) == 3:
            recipe = cls(kind="image", flip=False)
        else:
            recipe = cls(kind="identity")
        return dataclasses.replace(recipe, **overrides)

    def _finish(self, image: np.ndarray) -> np.ndarray:
        if self.mean is None:
            return image.astype(np.float32) * np.float32(1 / 255)
        return augment.normalize(image, self.mean, self.std)

    def eval_view(self, x: np.ndarray) -> np.ndarray:
        """The deterministic view used for evaluation."""
        x = np.asarray(x)
        if self.kind == "identity":
            return x.astype(np.float32)
        if self.kind == "imagenet":
            x = augment.center_crop(x, self.image_size, self.crop_fraction)
        return self._finish(x)

    def train_view(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random training view; all randomness comes from `rng`."""
        x = np.asarray(x)
        if self.kind == "identity" or not self.augment:
            return self.eval_view(x)
        if self.kind == "cifar":
            x = augment.random_crop(x, rng, self.crop_padding)
        elif self.kind == "imagenet":
            x = augment.random_resized_crop(x, rng, self.image_size, self.crop_scale)
        if self.flip:
            x = augment.random_flip(x, rng)
        return self._finish(x)

    @property
    def is_random(self) -> bool:
        """Whether two training views of one example can differ."""
        if not self.augment or self.kind == "identity":
            return False
        return self.kind != "image" or self.flip
