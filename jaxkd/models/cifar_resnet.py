"""CIFAR ResNets of RepDistiller/mdistiller: `resnet8` ... `resnet110`, `resnet8x4`, `resnet32x4`.

A 3x3 stem and three stages of basic blocks (depth = 6n + 2), strides 1, 2, 2, global
average pooling and a linear classifier. Inputs are NHWC, 32x32x3 by design.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from jaxkd.models._layers import Dtype, batch_norm, check_images, conv, global_avg_pool, linear
from jaxkd.models.core import FeatureModel
from jaxkd.models.resnet_blocks import BasicBlock, make_stage, run_stage


class CifarResNet(FeatureModel):
    """The CIFAR ResNet of He et al. 2016 with RepDistiller's stem and stage widths.

    Features (for 32x32 input, widths w = (w0, w1, w2, w3)):
      "stem" [B, 32, 32, w0] (conv-BN-ReLU), "stage1" [B, 32, 32, w1],
      "stage2" [B, 16, 16, w2], "stage3" [B, 8, 8, w3], "stage{i}_preact" (same shapes,
      the last block's sum before its ReLU), "pooled" [B, w3].

    References:
        He et al. 2016, "Deep Residual Learning for Image Recognition";
        Tian et al. 2020, "Contrastive Representation Distillation" (RepDistiller).
    """

    def __init__(
        self,
        depth: int,
        widths: Sequence[int] = (16, 16, 32, 64),
        *,
        num_classes: int,
        in_channels: int = 3,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"`depth` must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}.")
        if len(widths) != 4:
            raise ValueError(f"`widths` must have 4 entries (stem, 3 stages), got {widths}.")
        n = (depth - 2) // 6
        self.in_channels = in_channels
        self.conv1 = conv(in_channels, widths[0], 3, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(widths[0], dtype=dtype, rngs=rngs)
        stages, in_ch = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            stages.append(make_stage(BasicBlock, in_ch, planes, n, stride, dtype=dtype, rngs=rngs))
            in_ch = planes
        self.stages = nnx.List(stages)
        self.fc = linear(in_ch, num_classes, dtype=dtype, rngs=rngs)
        names = [f"stage{i}" for i in (1, 2, 3)]
        self.feature_names = ("stem", *names, *(f"{s}_preact" for s in names), "pooled")

    def __call__(self, x: jax.Array) -> jax.Array:
        check_images(x, self.in_channels, "CifarResNet")
        x = nnx.relu(self.bn1(self.conv1(x)))
        self.record("stem", x)
        for i, stage in enumerate(self.stages):
            x, preact = run_stage(stage, x)
            self.record(f"stage{i + 1}", x)
            self.record(f"stage{i + 1}_preact", preact)
        x = global_avg_pool(x)
        self.record("pooled", x)
        return self.fc(x)


def _factory(depth: int, widths: tuple[int, ...], doc: str):
    def build(*, num_classes: int, rngs: nnx.Rngs, **kwargs) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes=num_classes, rngs=rngs, **kwargs)

    build.__doc__ = doc
    return build


_THIN = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)
resnet8 = _factory(8, _THIN, "CIFAR ResNet-8, widths 16/16/32/64.")
resnet14 = _factory(14, _THIN, "CIFAR ResNet-14, widths 16/16/32/64.")
resnet20 = _factory(20, _THIN, "CIFAR ResNet-20, widths 16/16/32/64.")
resnet32 = _factory(32, _THIN, "CIFAR ResNet-32, widths 16/16/32/64.")
resnet44 = _factory(44, _THIN, "CIFAR ResNet-44, widths 16/16/32/64.")
resnet56 = _factory(56, _THIN, "CIFAR ResNet-56, widths 16/16/32/64.")
resnet110 = _factory(110, _THIN, "CIFAR ResNet-110, widths 16/16/32/64.")
resnet8x4 = _factory(8, _X4, "CIFAR ResNet-8x4, widths 32/64/128/256.")
resnet32x4 = _factory(32, _X4, "CIFAR ResNet-32x4, widths 32/64/128/256.")
