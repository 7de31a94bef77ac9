"""ResNet-18/34/50 as in torchvision, and RepDistiller's CIFAR-stem ResNet-18/50.

torchvision: 7x7/2 conv-BN-ReLU, 3x3/2 max-pool, four stages (64, 128, 256, 512 planes,
strides 1, 2, 2, 2), global average pooling, linear; Bottleneck strides on its 3x3 conv
(v1.5). The CIFAR stem (RepDistiller `resnetv2.py`) is one 3x3/1 conv-BN-ReLU without
max-pooling. Inputs are NHWC: 224x224x3 (ImageNet) or 32x32x3 (CIFAR stem).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
from flax import nnx

from jaxkd.models._layers import Dtype, batch_norm, check_images, conv, global_avg_pool, linear
from jaxkd.models.core import FeatureModel
from jaxkd.models.resnet_blocks import BasicBlock, Bottleneck, make_stage, run_stage

_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(FeatureModel):
    """ResNet of He et al. 2016 with four stages.

    Features (224x224 input, ImageNet stem; e = 1 for basic, 4 for bottleneck blocks):
      "stem" [B, 56, 56, 64] (after the max-pool), "stage1" [B, 56, 56, 64e],
      "stage2" [B, 28, 28, 128e], "stage3" [B, 14, 14, 256e], "stage4" [B, 7, 7, 512e],
      "stage{i}_preact" (same shapes, the last block's sum before its ReLU),
      "pooled" [B, 512e]. With the CIFAR stem and 32x32 input: stem 32x32, stages
      32, 16, 8, 4.

    References:
        He et al. 2016, "Deep Residual Learning for Image Recognition" (torchvision).
    """

    def __init__(
        self,
        block: Literal["basic", "bottleneck"],
        layers: Sequence[int],
        *,
        num_classes: int,
        stem: Literal["imagenet", "cifar"] = "imagenet",
        in_channels: int = 3,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        if block not in _BLOCKS:
            raise ValueError(f"`block` must be one of {sorted(_BLOCKS)}, got {block!r}.")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"`stem` must be 'imagenet' or 'cifar', got {stem!r}.")
        if len(layers) != 4:
            raise ValueError(f"`layers` must give 4 stage depths, got {tuple(layers)}.")
        block_cls = _BLOCKS[block]
        self.in_channels = in_channels
        self.imagenet_stem = stem == "imagenet"
        k, s = (7, 2) if self.imagenet_stem else (3, 1)
        self.conv1 = conv(in_channels, 64, k, stride=s, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(64, dtype=dtype, rngs=rngs)
        stages, in_ch = [], 64
        for planes, n, stride in zip((64, 128, 256, 512), layers, (1, 2, 2, 2), strict=True):
            stages.append(make_stage(block_cls, in_ch, planes, n, stride, dtype=dtype, rngs=rngs))
            in_ch = planes * block_cls.expansion
        self.stages = nnx.List(stages)
        self.fc = linear(in_ch, num_classes, dtype=dtype, rngs=rngs)
        names = [f"stage{i}" for i in (1, 2, 3, 4)]
        self.feature_names = ("stem", *names, *(f"{s}_preact" for s in names), "pooled")

    def __call__(self, x: jax.Array) -> jax.Array:
        check_images(x, self.in_channels, "ResNet")
        x = nnx.relu(self.bn1(self.conv1(x)))
        if self.imagenet_stem:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        self.record("stem", x)
        for i, stage in enumerate(self.stages):
            x, preact = run_stage(stage, x)
            self.record(f"stage{i + 1}", x)
            self.record(f"stage{i + 1}_preact", preact)
        x = global_avg_pool(x)
        self.record("pooled", x)
        return self.fc(x)


def resnet18(*, num_classes: int = 1000, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """torchvision ResNet-18 (basic blocks 2-2-2-2)."""
    return ResNet("basic", (2, 2, 2, 2), num_classes=num_classes, rngs=rngs, **kwargs)


def resnet34(*, num_classes: int = 1000, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """torchvision ResNet-34 (basic blocks 3-4-6-3)."""
    return ResNet("basic", (3, 4, 6, 3), num_classes=num_classes, rngs=rngs, **kwargs)


def resnet50(*, num_classes: int = 1000, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """torchvision ResNet-50 (bottleneck blocks 3-4-6-3)."""
    return ResNet("bottleneck", (3, 4, 6, 3), num_classes=num_classes, rngs=rngs, **kwargs)


def resnet18_cifar(*, num_classes: int, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """RepDistiller/mdistiller `ResNet18`: ResNet-18 with the 3x3 CIFAR stem."""
    kwargs.setdefault("stem", "cifar")
    return resnet18(num_classes=num_classes, rngs=rngs, **kwargs)


def resnet50_cifar(*, num_classes: int, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """RepDistiller/mdistiller `ResNet50`: ResNet-50 with the 3x3 CIFAR stem."""
    kwargs.setdefault("stem", "cifar")
    return resnet50(num_classes=num_classes, rngs=rngs, **kwargs)
