"""ShuffleNetV1 (g = 3) and ShuffleNetV2 (1x) for CIFAR as in RepDistiller/mdistiller.

Both use a 1x1 stem without max-pooling, three stride-2 stages and PyTorch's default
initialisation (the reference sets none). Inputs are NHWC, 32x32x3 by design.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkd.models._layers import (
    TORCH_DEFAULT,
    Dtype,
    batch_norm,
    channel_shuffle,
    check_images,
    conv,
    global_avg_pool,
    linear,
)
from jaxkd.models.core import FeatureModel

_STEM = 24


def _conv(in_ch: int, out_ch: int, k: int, *, dtype: Dtype, rngs: nnx.Rngs, **kw) -> nnx.Conv:
    return conv(in_ch, out_ch, k, kernel_init=TORCH_DEFAULT, dtype=dtype, rngs=rngs, **kw)


class ShuffleV1Block(nnx.Module):
    """Grouped 1x1-BN-ReLU, shuffle, 3x3 depthwise-BN-ReLU, grouped 1x1-BN; add or concat.

    At stride 2 the shortcut is a 3x3 average pool (padding counted) concatenated to the
    branch. The first block after the 24-channel stem uses an ungrouped first 1x1.
    Returns `(relu(preact), preact)`.
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, groups: int, *, dtype: Dtype, rngs: nnx.Rngs
    ):
        mid = out_ch // 4
        self.stride = stride
        self.g1 = 1 if in_ch == _STEM else groups
        self.conv1 = _conv(in_ch, mid, 1, groups=self.g1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(mid, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(mid, mid, 3, stride=stride, groups=mid, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(mid, dtype=dtype, rngs=rngs)
        self.conv3 = _conv(mid, out_ch, 1, groups=groups, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(out_ch, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.g1)
        out = nnx.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            res = nnx.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            preact = jnp.concatenate([out, res], axis=-1)
        else:
            preact = out + x
        return nnx.relu(preact), preact


class ShuffleNetV1(FeatureModel):
    """ShuffleNetV1 (Zhang et al. 2018) in RepDistiller's CIFAR variant (`ShuffleV1`).

    Features (32x32 input, defaults): "stem" [B, 32, 32, 24], "stage1" [B, 16, 16, 240],
    "stage2" [B, 8, 8, 480], "stage3" [B, 4, 4, 960], "stage{i}_preact" (same shapes, the
    last block before its ReLU), "pooled" [B, 960].

    References:
        Zhang et al. 2018, "ShuffleNet: An Extremely Efficient CNN for Mobile Devices";
        Tian et al. 2020, "Contrastive Representation Distillation" (RepDistiller).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        out_channels: Sequence[int] = (240, 480, 960),
        num_blocks: Sequence[int] = (4, 8, 4),
        groups: int = 3,
        in_channels: int = 3,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        if len(out_channels) != len(num_blocks) or min(num_blocks, default=0) < 1:
            raise ValueError(
                "`out_channels` and `num_blocks` must have one entry per stage and every stage "
                f"at least one block, got out_channels={tuple(out_channels)} and "
                f"num_blocks={tuple(num_blocks)}."
            )
        self.in_channels = in_channels
        self.conv1 = _conv(in_channels, _STEM, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(_STEM, dtype=dtype, rngs=rngs)
        stages, in_ch = [], _STEM
        for out_ch, n in zip(out_channels, num_blocks, strict=True):
            blocks = []
            for i in range(n):
                # The stride-2 block concatenates its input, so its branch makes the rest.
                branch = out_ch - in_ch if i == 0 else out_ch
                stride = 2 if i == 0 else 1
                blocks.append(ShuffleV1Block(in_ch, branch, stride, groups, dtype=dtype, rngs=rngs))
                in_ch = out_ch
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.fc = linear(in_ch, num_classes, dtype=dtype, rngs=rngs)
        names = [f"stage{i + 1}" for i in range(len(out_channels))]
        self.feature_names = ("stem", *names, *(f"{s}_preact" for s in names), "pooled")

    def __call__(self, x: jax.Array) -> jax.Array:
        check_images(x, self.in_channels, "ShuffleNetV1")
        x = nnx.relu(self.bn1(self.conv1(x)))
        self.record("stem", x)
        for i, stage in enumerate(self.stages):
            for block in stage:
                x, preact = block(x)
            self.record(f"stage{i + 1}", x)
            self.record(f"stage{i + 1}_preact", preact)
        x = global_avg_pool(x)
        self.record("pooled", x)
        return self.fc(x)


class ShuffleV2Down(nnx.Module):
    """Stride-2 unit: two branches (dw3x3-BN, 1x1-BN-ReLU | 1x1-BN-ReLU, dw3x3-BN,
    1x1-BN-ReLU), concatenated and shuffled with 2 groups."""

    def __init__(self, in_ch: int, out_ch: int, *, dtype: Dtype, rngs: nnx.Rngs):
        mid = out_ch // 2
        self.conv1 = _conv(in_ch, in_ch, 3, stride=2, groups=in_ch, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(in_ch, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(in_ch, mid, 1, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(mid, dtype=dtype, rngs=rngs)
        self.conv3 = _conv(in_ch, mid, 1, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(mid, dtype=dtype, rngs=rngs)
        self.conv4 = _conv(mid, mid, 3, stride=2, groups=mid, dtype=dtype, rngs=rngs)
        self.bn4 = batch_norm(mid, dtype=dtype, rngs=rngs)
        self.conv5 = _conv(mid, mid, 1, dtype=dtype, rngs=rngs)
        self.bn5 = batch_norm(mid, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        left = nnx.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = nnx.relu(self.bn3(self.conv3(x)))
        right = nnx.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleV2Basic(nnx.Module):
    """Stride-1 unit: split channels in half, transform the second half (1x1-BN-ReLU,
    dw3x3-BN, 1x1-BN-ReLU), concatenate and shuffle with 2 groups.

    Returns `(out, preact)`, `preact` the concatenation before the last ReLU and before
    the shuffle (RepDistiller's `preact`; its channel order differs from `out`'s).
    """

    def __init__(self, channels: int, *, dtype: Dtype, rngs: nnx.Rngs):
        half = channels // 2
        self.half = half
        self.conv1 = _conv(half, half, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(half, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(half, half, 3, groups=half, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(half, dtype=dtype, rngs=rngs)
        self.conv3 = _conv(half, half, 1, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(half, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x1, x2 = x[..., : self.half], x[..., self.half :]
        out = nnx.relu(self.bn1(self.conv1(x2)))
        pre = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        out = jnp.concatenate([x1, nnx.relu(pre)], axis=-1)
        return channel_shuffle(out, 2), jnp.concatenate([x1, pre], axis=-1)


class ShuffleNetV2(FeatureModel):
    """ShuffleNetV2 1x (Ma et al. 2018) in RepDistiller's CIFAR variant (`ShuffleV2`).

    Each stage is one stride-2 unit followed by `num_blocks` stride-1 units.
    Features (32x32 input, defaults): "stem" [B, 32, 32, 24], "stage1" [B, 16, 16, 116],
    "stage2" [B, 8, 8, 232], "stage3" [B, 4, 4, 464], "stage{i}_preact" (same shapes, see
    `ShuffleV2Basic`), "pooled" [B, 1024] (after the 1x1 head conv-BN-ReLU and pooling).

    References:
        Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN Design";
        Tian et al. 2020, "Contrastive Representation Distillation" (RepDistiller).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        out_channels: Sequence[int] = (116, 232, 464, 1024),
        num_blocks: Sequence[int] = (3, 7, 3),
        in_channels: int = 3,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        if len(out_channels) != len(num_blocks) + 1:
            raise ValueError(
                "`out_channels` must list one width per stage plus the head width, got "
                f"out_channels={tuple(out_channels)} and num_blocks={tuple(num_blocks)}."
            )
        self.in_channels = in_channels
        self.conv1 = _conv(in_channels, _STEM, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(_STEM, dtype=dtype, rngs=rngs)
        downs, stages, in_ch = [], [], _STEM
        for out_ch, n in zip(out_channels[:-1], num_blocks, strict=True):
            downs.append(ShuffleV2Down(in_ch, out_ch, dtype=dtype, rngs=rngs))
            stages.append(
                nnx.List([ShuffleV2Basic(out_ch, dtype=dtype, rngs=rngs) for _ in range(n)])
            )
            in_ch = out_ch
        self.down = nnx.List(downs)
        self.stages = nnx.List(stages)
        self.conv2 = _conv(in_ch, out_channels[-1], 1, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(out_channels[-1], dtype=dtype, rngs=rngs)
        self.fc = linear(out_channels[-1], num_classes, dtype=dtype, rngs=rngs)
        names = [f"stage{i + 1}" for i in range(len(num_blocks))]
        self.feature_names = ("stem", *names, *(f"{s}_preact" for s in names), "pooled")

    def __call__(self, x: jax.Array) -> jax.Array:
        check_images(x, self.in_channels, "ShuffleNetV2")
        x = nnx.relu(self.bn1(self.conv1(x)))
        self.record("stem", x)
        for i, (down, stage) in enumerate(zip(self.down, self.stages, strict=True)):
            x = preact = down(x)
            for block in stage:
                x, preact = block(x)
            self.record(f"stage{i + 1}", x)
            self.record(f"stage{i + 1}_preact", preact)
        x = global_avg_pool(nnx.relu(self.bn2(self.conv2(x))))
        self.record("pooled", x)
        return self.fc(x)


def shufflenetv1(*, num_classes: int, rngs: nnx.Rngs, **kwargs) -> ShuffleNetV1:
    """ShuffleNetV1, g = 3, widths 240/480/960 (RepDistiller `ShuffleV1`)."""
    return ShuffleNetV1(num_classes=num_classes, rngs=rngs, **kwargs)


def shufflenetv2(*, num_classes: int, rngs: nnx.Rngs, **kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1x, widths 116/232/464, head 1024 (RepDistiller `ShuffleV2`)."""
    return ShuffleNetV2(num_classes=num_classes, rngs=rngs, **kwargs)
