"""CIFAR Wide ResNets of RepDistiller/mdistiller: `wrn_16_1`, `wrn_16_2`, `wrn_40_1`, `wrn_40_2`.

Pre-activation blocks (BN-ReLU-conv), depth = 6n + 4, widths 16, 16k, 32k, 64k.
Inputs are NHWC, 32x32x3 by design.
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


class WideBlock(nnx.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3 plus shortcut (no ReLU after).

    When the block changes width, the 1x1 shortcut sees the activated input, as in the
    reference. Returns `(out, pre)`: `pre = bn1(x)`, the normalised input before its ReLU.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        dropout_rate: float,
        *,
        dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        self.equal_in_out = in_ch == out_ch
        self.bn1 = batch_norm(in_ch, dtype=dtype, rngs=rngs)
        self.conv1 = conv(in_ch, out_ch, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(out_ch, dtype=dtype, rngs=rngs)
        self.conv2 = conv(out_ch, out_ch, 3, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs) if dropout_rate > 0 else None
        self.shortcut = (
            None
            if self.equal_in_out
            else conv(in_ch, out_ch, 1, stride=stride, padding=0, dtype=dtype, rngs=rngs)
        )

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        pre = self.bn1(x)
        act = nnx.relu(pre)
        out = nnx.relu(self.bn2(self.conv1(act)))
        if self.dropout is not None:
            out = self.dropout(out)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(act)), pre


class WideResNet(FeatureModel):
    """WRN-d-k of Zagoruyko & Komodakis 2016, RepDistiller's variant.

    Features (32x32 input): "stem" [B, 32, 32, 16] (the first conv, no BN/ReLU),
    "stage1" [B, 32, 32, 16k], "stage2" [B, 16, 16, 32k], "stage3" [B, 8, 8, 64k] (block
    outputs; pre-activation blocks end without ReLU), "stage{i}_preact" (same shapes: the
    stage output after the next BatchNorm, before its ReLU, as RepDistiller's `preact=True`),
    "pooled" [B, 64k].

    References:
        Zagoruyko & Komodakis 2016, "Wide Residual Networks";
        Tian et al. 2020, "Contrastive Representation Distillation" (RepDistiller).
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int = 1,
        *,
        num_classes: int,
        dropout_rate: float = 0.0,
        in_channels: int = 3,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"`depth` must be 6n + 4 with n >= 1 (10, 16, 40, ...), got {depth}.")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.in_channels = in_channels
        self.conv1 = conv(in_channels, widths[0], 3, dtype=dtype, rngs=rngs)
        stages, in_ch = [], widths[0]
        for out_ch, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = [
                WideBlock(
                    in_ch if i == 0 else out_ch,
                    out_ch,
                    stride if i == 0 else 1,
                    dropout_rate,
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(n)
            ]
            stages.append(nnx.List(blocks))
            in_ch = out_ch
        self.stages = nnx.List(stages)
        self.bn1 = batch_norm(in_ch, dtype=dtype, rngs=rngs)
        self.fc = linear(in_ch, num_classes, bias_init=ZEROS, dtype=dtype, rngs=rngs)
        names = [f"stage{i}" for i in (1, 2, 3)]
        self.feature_names = ("stem", *names, *(f"{s}_preact" for s in names), "pooled")

    def __call__(self, x: jax.Array) -> jax.Array:
        check_images(x, self.in_channels, "WideResNet")
        x = self.conv1(x)
        self.record("stem", x)
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                x, pre = block(x)
                if i > 0 and j == 0:
                    # The first block of a stage normalises the previous stage's output.
                    self.record(f"stage{i}_preact", pre)
            self.record(f"stage{i + 1}", x)
        pre = self.bn1(x)
        self.record("stage3_preact", pre)
        x = global_avg_pool(nnx.relu(pre))
        self.record("pooled", x)
        return self.fc(x)


def _factory(depth: int, widen: int):
    def build(*, num_classes: int, rngs: nnx.Rngs, **kwargs) -> WideResNet:
        return WideResNet(depth, widen, num_classes=num_classes, rngs=rngs, **kwargs)

    build.__doc__ = f"WRN-{depth}-{widen} for CIFAR."
    return build


wrn_16_1 = _factory(16, 1)
wrn_16_2 = _factory(16, 2)
wrn_40_1 = _factory(40, 1)
wrn_40_2 = _factory(40, 2)
