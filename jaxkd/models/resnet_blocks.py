"""Post-activation residual blocks (He et al. 2016) shared by the CIFAR and ImageNet ResNets.

Each block returns `(out, preact)`: `out = relu(preact)` and `preact = branch(x) +
shortcut(x)`, the pre-ReLU sum that RepDistiller exposes as `preact` features.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxkd.models._layers import Dtype, batch_norm, conv


class _Shortcut(nnx.Module):
    """1x1 strided projection + BatchNorm, used when the block changes shape."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.conv = conv(in_ch, out_ch, 1, stride=stride, dtype=dtype, rngs=rngs)
        self.bn = batch_norm(out_ch, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    expansion = 1

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, *, dtype: Dtype = None, rngs: nnx.Rngs
    ):
        out_ch = planes * self.expansion
        self.conv1 = conv(in_ch, planes, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(planes, dtype=dtype, rngs=rngs)
        self.conv2 = conv(planes, planes, 3, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(planes, dtype=dtype, rngs=rngs)
        needs_proj = stride != 1 or in_ch != out_ch
        self.shortcut = (
            _Shortcut(in_ch, out_ch, stride, dtype=dtype, rngs=rngs) if needs_proj else None
        )

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        preact = out + (x if self.shortcut is None else self.shortcut(x))
        return nnx.relu(preact), preact


class Bottleneck(nnx.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(x4)-BN plus shortcut, then ReLU.

    The stride sits on the 3x3 convolution (torchvision's "ResNet v1.5").
    """

    expansion = 4

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, *, dtype: Dtype = None, rngs: nnx.Rngs
    ):
        out_ch = planes * self.expansion
        self.conv1 = conv(in_ch, planes, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(planes, dtype=dtype, rngs=rngs)
        self.conv2 = conv(planes, planes, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(planes, dtype=dtype, rngs=rngs)
        self.conv3 = conv(planes, out_ch, 1, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(out_ch, dtype=dtype, rngs=rngs)
        needs_proj = stride != 1 or in_ch != out_ch
        self.shortcut = (
            _Shortcut(in_ch, out_ch, stride, dtype=dtype, rngs=rngs) if needs_proj else None
        )

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = nnx.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        preact = out + (x if self.shortcut is None else self.shortcut(x))
        return nnx.relu(preact), preact


def make_stage(
    block: type[BasicBlock] | type[Bottleneck],
    in_ch: int,
    planes: int,
    num_blocks: int,
    stride: int,
    *,
    dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.List:
    """`num_blocks` blocks, the first with `stride`; output channels `planes * expansion`."""
    blocks = []
    for i in range(num_blocks):
        blocks.append(block(in_ch, planes, stride if i == 0 else 1, dtype=dtype, rngs=rngs))
        in_ch = planes * block.expansion
    return nnx.List(blocks)


def run_stage(blocks: nnx.List, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Runs a stage; returns its output and the pre-ReLU sum of its last block."""
    preact = x
    for block in blocks:
        x, preact = block(x)
    return x, preact
