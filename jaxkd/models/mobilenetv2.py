"""MobileNetV2 for CIFAR as in RepDistiller (`mobile_half`) and mdistiller (`MobileNetV2`).

Expansion T = 6, width multiplier 0.5, ReLU (not ReLU6), stride-2 stem, the 1280-wide
1x1 head conv kept at full width. Inputs are NHWC, 32x32x3 by design.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxkd.models._layers import (
    ZEROS,
    Dtype,
    batch_norm,
    check_images,
    conv,
    global_avg_pool,
    linear,
)
from jaxkd.models.core import FeatureModel


class InvertedResidual(nnx.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise(stride)-BN-ReLU, 1x1 project-BN, skip if same shape.

    The expansion conv is present even at expansion 1, as in the reference.
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, expand: int, *, dtype: Dtype, rngs: nnx.Rngs
    ):
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv1 = conv(in_ch, hidden, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(hidden, dtype=dtype, rngs=rngs)
        self.conv2 = conv(hidden, hidden, 3, stride=stride, groups=hidden, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(hidden, dtype=dtype, rngs=rngs)
        self.conv3 = conv(hidden, out_ch, 1, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(out_ch, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = nnx.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return x + out if self.use_residual else out


# (expansion, channels, repeats, stride); expansion None means the model's `expand_ratio`.
_SETTING = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
# RepDistiller's feature taps: after block groups 1, 2, 4 and 6 (0-based).
_TAPS = {1: "stage1", 2: "stage2", 4: "stage3", 6: "stage4"}


class MobileNetV2(FeatureModel):
    """MobileNetV2 (Sandler et al. 2018) in RepDistiller's CIFAR variant.

    Features (32x32 input, width 0.5): "stem" [B, 16, 16, 16], "stage1" [B, 16, 16, 12],
    "stage2" [B, 8, 8, 16], "stage3" [B, 4, 4, 48], "stage4" [B, 2, 2, 160],
    "stage{i}_preact" (identical to "stage{i}": the blocks end in BN without ReLU),
    "pooled" [B, 1280] (after the 1x1 head conv-BN-ReLU and pooling).

    References:
        Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks";
        Tian et al. 2020, "Contrastive Representation Distillation" (RepDistiller).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        expand_ratio: int = 6,
        width_mult: float = 0.5,
        in_channels: int = 3,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        self.in_channels = in_channels
        in_ch = int(32 * width_mult)
        self.conv1 = conv(in_channels, in_ch, 3, stride=2, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(in_ch, dtype=dtype, rngs=rngs)
        groups = []
        for t, c, n, s in _SETTING:
            out_ch = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(
                    InvertedResidual(
                        in_ch, out_ch, s if i == 0 else 1, t or expand_ratio, dtype=dtype, rngs=rngs
                    )
                )
                in_ch = out_ch
            groups.append(nnx.List(blocks))
        self.groups = nnx.List(groups)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv(in_ch, last, 1, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(last, dtype=dtype, rngs=rngs)
        self.classifier = linear(
            last,
            num_classes,
            kernel_init=nnx.initializers.normal(0.01),
            bias_init=ZEROS,
            dtype=dtype,
            rngs=rngs,
        )
        names = list(_TAPS.values())
        self.feature_names = ("stem", *names, *(f"{s}_preact" for s in names), "pooled")

    def __call__(self, x: jax.Array) -> jax.Array:
        check_images(x, self.in_channels, "MobileNetV2")
        x = nnx.relu(self.bn1(self.conv1(x)))
        self.record("stem", x)
        for g, blocks in enumerate(self.groups):
            for block in blocks:
                x = block(x)
            if g in _TAPS:
                self.record(_TAPS[g], x)
                self.record(f"{_TAPS[g]}_preact", x)
        x = nnx.relu(self.bn2(self.conv2(x)))
        x = global_avg_pool(x)
        self.record("pooled", x)
        return self.classifier(x)


def mobilenetv2(*, num_classes: int, rngs: nnx.Rngs, **kwargs) -> MobileNetV2:
    """MobileNetV2 with T = 6 and width 0.5 (RepDistiller `mobile_half`)."""
    return MobileNetV2(num_classes=num_classes, rngs=rngs, **kwargs)
