"""VGG with BatchNorm for CIFAR as in RepDistiller/mdistiller (`vgg8` ... `vgg19`).

Five conv blocks (3x3 conv with bias, BN, ReLU), max-pooling between the first four,
no FC stack: global average pooling and one linear classifier on 512 channels.
Inputs are NHWC, 32x32x3 by design (a 64x64 input also pools after block 3, as the
reference does for Tiny-ImageNet).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from jaxkd.models._layers import (
    KAIMING_FAN_OUT,
    ZEROS,
    Dtype,
    batch_norm,
    check_images,
    conv,
    global_avg_pool,
    linear,
)
from jaxkd.models.core import FeatureModel

CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": (
        (64, 64),
        (128, 128),
        (256, 256, 256, 256),
        (512, 512, 512, 512),
        (512, 512, 512, 512),
    ),
}


class VGGBlock(nnx.Module):
    """(conv3x3-BN-ReLU) x k with the final ReLU left to the caller (its output is preact)."""

    def __init__(self, in_ch: int, widths: Sequence[int], *, dtype: Dtype, rngs: nnx.Rngs):
        convs, bns = [], []
        for width in widths:
            convs.append(
                conv(
                    in_ch,
                    width,
                    3,
                    use_bias=True,
                    kernel_init=KAIMING_FAN_OUT,
                    bias_init=ZEROS,
                    dtype=dtype,
                    rngs=rngs,
                )
            )
            bns.append(batch_norm(width, dtype=dtype, rngs=rngs))
            in_ch = width
        self.convs = nnx.List(convs)
        self.bns = nnx.List(bns)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, (c, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            x = bn(c(x))
            if i < len(self.convs) - 1:
                x = nnx.relu(x)
        return x


class VGG(FeatureModel):
    """VGG-BN for CIFAR (Simonyan & Zisserman 2015, RepDistiller's variant).

    Features (32x32 input): "stem" [B, 32, 32, 64] (block 0 after ReLU), "stage1"
    [B, 16, 16, 128], "stage2" [B, 8, 8, 256], "stage3" [B, 4, 4, 512], "stage4"
    [B, 4, 4, 512] (blocks 1-4 after ReLU), "stage{i}_preact" (the same before the ReLU),
    "pooled" [B, 512].

    References:
        Simonyan & Zisserman 2015, "Very Deep Convolutional Networks";
        Tian et al. 2020, "Contrastive Representation Distillation" (RepDistiller).
    """

    def __init__(
        self,
        config: Sequence[Sequence[int]],
        *,
        num_classes: int,
        in_channels: int = 3,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        if len(config) != 5:
            raise ValueError(f"`config` must list 5 blocks of conv widths, got {len(config)}.")
        self.in_channels = in_channels
        self.block0 = VGGBlock(in_channels, config[0], dtype=dtype, rngs=rngs)
        blocks, in_ch = [], config[0][-1]
        for widths in config[1:]:
            blocks.append(VGGBlock(in_ch, widths, dtype=dtype, rngs=rngs))
            in_ch = widths[-1]
        self.blocks = nnx.List(blocks)
        self.classifier = linear(
            in_ch,
            num_classes,
            kernel_init=nnx.initializers.normal(0.01),
            bias_init=ZEROS,
            dtype=dtype,
            rngs=rngs,
        )
        names = [f"stage{i}" for i in (1, 2, 3, 4)]
        self.feature_names = ("stem", *names, *(f"{s}_preact" for s in names), "pooled")

    def __call__(self, x: jax.Array) -> jax.Array:
        check_images(x, self.in_channels, "VGG")
        height = x.shape[1]
        x = nnx.relu(self.block0(x))
        self.record("stem", x)
        for i, block in enumerate(self.blocks, start=1):
            if i < 4 or height == 64:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            pre = block(x)
            x = nnx.relu(pre)
            self.record(f"stage{i}_preact", pre)
            self.record(f"stage{i}", x)
        x = global_avg_pool(x)
        self.record("pooled", x)
        return self.classifier(x)


def _factory(name: str):
    def build(*, num_classes: int, rngs: nnx.Rngs, **kwargs) -> VGG:
        return VGG(CONFIGS[name], num_classes=num_classes, rngs=rngs, **kwargs)

    build.__doc__ = f"{name} with BatchNorm for CIFAR (RepDistiller's `{name}_bn`)."
    return build


vgg8 = _factory("vgg8")
vgg11 = _factory("vgg11")
vgg13 = _factory("vgg13")
vgg16 = _factory("vgg16")
vgg19 = _factory("vgg19")
