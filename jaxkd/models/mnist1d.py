"""MNIST-1D models: the paper's MLP and CNN, configurable for small students.

Inputs are `[batch, length]` float signals (length 40 for MNIST-1D), as the dataset stores
them; `[batch, length, 1]` is also accepted.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
from flax import nnx

from jaxkd.models._layers import TORCH_DEFAULT, Dtype, conv, linear
from jaxkd.models.core import FeatureModel


def _check_signal(x: jax.Array, length: int, model: str) -> jax.Array:
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2 or x.shape[-1] != length:
        raise ValueError(
            f"{model} expects `x` of shape [batch, {length}] or [batch, {length}, 1], "
            f"got shape {tuple(x.shape)}."
        )
    return x


class MLP(FeatureModel):
    """A ReLU MLP; the defaults are the MNIST-1D paper's (40 -> 100 -> 100 -> 10).

    h_1 = relu(W_1 x); h_i = h_{i-1} + relu(W_i h_{i-1}) for i > 1 when the widths agree
    and `residual` (the paper's `MLPBase` adds this skip), else h_i = relu(W_i h_{i-1});
    logits = W_out h_k.

    Features: "stage{i}" = h_i, [B, hidden[i-1]]; "pooled" = h_k, [B, hidden[-1]].

    References:
        Greydanus 2020, "Scaling Down Deep Learning" (MNIST-1D), `MLPBase`.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_features: int = 40,
        hidden: Sequence[int] = (100, 100),
        residual: bool = True,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        if not hidden:
            raise ValueError("`hidden` must name at least one hidden width, got ().")
        self.in_features = in_features
        self.residual = residual
        widths = (in_features, *hidden)
        self.layers = nnx.List(
            [linear(a, b, dtype=dtype, rngs=rngs) for a, b in itertools.pairwise(widths)]
        )
        self.head = linear(hidden[-1], num_classes, dtype=dtype, rngs=rngs)
        self.feature_names = (*(f"stage{i + 1}" for i in range(len(hidden))), "pooled")

    def __call__(self, x: jax.Array) -> jax.Array:
        h = _check_signal(x, self.in_features, "MLP")
        for i, layer in enumerate(self.layers):
            out = nnx.relu(layer(h))
            h = h + out if self.residual and i > 0 and out.shape == h.shape else out
            self.record(f"stage{i + 1}", h)
        self.record("pooled", h)
        return self.head(h)


class ConvNet1D(FeatureModel):
    """A 1D CNN; the defaults are the MNIST-1D paper's `ConvBase`.

    Conv1d(1->25, k=5, s=2, p=1) -> ReLU -> Conv1d(25->25, k=3, s=2, p=1) -> ReLU ->
    Conv1d(25->25, k=3, s=2, p=1) -> ReLU -> flatten -> Linear(125 -> 10) for length 40.
    The flatten is position-major ([B, L, C] -> [B, L*C]) where the NCL reference is
    channel-major: the same function class and parameter count.

    Features: "stage{i}" = output of conv i after ReLU, [B, L_i, C_i] (L = 19, 10, 5 for
    the paper's model); "pooled" = the flattened last stage, [B, L_k * C_k].

    References:
        Greydanus 2020, "Scaling Down Deep Learning" (MNIST-1D), `ConvBase`.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        length: int = 40,
        channels: Sequence[int] = (25, 25, 25),
        kernel_sizes: Sequence[int] = (5, 3, 3),
        stride: int = 2,
        padding: int = 1,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        if not channels or len(channels) != len(kernel_sizes):
            raise ValueError(
                "`channels` and `kernel_sizes` must be non-empty and of equal length, got "
                f"channels={tuple(channels)} and kernel_sizes={tuple(kernel_sizes)}."
            )
        self.length = length
        convs, in_ch, out_len = [], 1, length
        for ch, k in zip(channels, kernel_sizes, strict=True):
            convs.append(
                conv(
                    in_ch,
                    ch,
                    k,
                    stride=stride,
                    padding=padding,
                    use_bias=True,
                    ndim=1,
                    kernel_init=TORCH_DEFAULT,
                    dtype=dtype,
                    rngs=rngs,
                )
            )
            in_ch, out_len = ch, (out_len + 2 * padding - k) // stride + 1
            if out_len < 1:
                raise ValueError(f"length {length} is too short for {len(channels)} convs.")
        self.convs = nnx.List(convs)
        self.head = linear(out_len * in_ch, num_classes, dtype=dtype, rngs=rngs)
        self.feature_names = (*(f"stage{i + 1}" for i in range(len(channels))), "pooled")

    def __call__(self, x: jax.Array) -> jax.Array:
        h = _check_signal(x, self.length, "ConvNet1D")[..., None]
        for i, layer in enumerate(self.convs):
            h = nnx.relu(layer(h))
            self.record(f"stage{i + 1}", h)
        h = h.reshape(h.shape[0], -1)
        self.record("pooled", h)
        return self.head(h)


def mnist1d_mlp(*, num_classes: int = 10, rngs: nnx.Rngs, **kwargs) -> MLP:
    """The MNIST-1D paper's MLP, 40 -> 100 -> 100 -> 10 (15,210 parameters)."""
    return MLP(num_classes=num_classes, rngs=rngs, **kwargs)


def mnist1d_cnn(*, num_classes: int = 10, rngs: nnx.Rngs, **kwargs) -> ConvNet1D:
    """The MNIST-1D paper's CNN, three 25-channel stride-2 convs (5,210 parameters)."""
    return ConvNet1D(num_classes=num_classes, rngs=rngs, **kwargs)


def mnist1d_mlp_small(*, num_classes: int = 10, rngs: nnx.Rngs, **kwargs) -> MLP:
    """A small MLP student, 40 -> 32 -> 32 -> 10 (2,698 parameters)."""
    kwargs.setdefault("hidden", (32, 32))
    return MLP(num_classes=num_classes, rngs=rngs, **kwargs)


def mnist1d_cnn_small(*, num_classes: int = 10, rngs: nnx.Rngs, **kwargs) -> ConvNet1D:
    """A small CNN student, the paper's CNN at 8 channels (858 parameters)."""
    kwargs.setdefault("channels", (8, 8, 8))
    return ConvNet1D(num_classes=num_classes, rngs=rngs, **kwargs)
