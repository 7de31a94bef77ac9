"""Layer builders shared by the reference models.

The reference models were defined in PyTorch, so these builders reproduce PyTorch's layer
semantics where Flax defaults differ: explicit symmetric padding (Flax "SAME" pads
asymmetrically at stride 2), BatchNorm momentum 0.1 in PyTorch's convention (0.9 in Flax's),
epsilon 1e-5, and the reference initialisations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkd.models._conv_grad import conv_general_dilated

Dtype = jnp.dtype | type | None

# `nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu")`, and also RepDistiller's
# `normal_(0, sqrt(2 / (k * k * out_channels)))`: the same distribution.
KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default for `nn.Linear`/`nn.Conv*` weights, `kaiming_uniform_(a=sqrt(5))`, is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_DEFAULT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
ZEROS = nnx.initializers.zeros_init()


def torch_bias_init(fan_in: int) -> nnx.Initializer:
    """PyTorch's default bias initialiser, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Flax bias initialisers do not see the fan-in, so it is bound here.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype or jnp.float32, -bound, bound)

    return init


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    rngs: nnx.Rngs,
    stride: int = 1,
    padding: int | None = None,
    groups: int = 1,
    use_bias: bool = False,
    kernel_init: nnx.Initializer = KAIMING_FAN_OUT,
    bias_init: nnx.Initializer | None = None,
    ndim: int = 2,
    dtype: Dtype = None,
) -> nnx.Conv:
    """A convolution with PyTorch's explicit symmetric padding (default `kernel_size // 2`)."""
    pad = kernel_size // 2 if padding is None else padding
    fan_in = in_channels // groups * kernel_size**ndim
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size,) * ndim,
        strides=stride,
        padding=((pad, pad),) * ndim,
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=bias_init if bias_init is not None else torch_bias_init(fan_in),
        dtype=dtype,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


def batch_norm(num_features: int, *, rngs: nnx.Rngs, dtype: Dtype = None) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's defaults (running-average momentum 0.1, epsilon 1e-5)."""
    return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


def linear(
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    kernel_init: nnx.Initializer = TORCH_DEFAULT,
    bias_init: nnx.Initializer | None = None,
    dtype: Dtype = None,
) -> nnx.Linear:
    """A dense layer; PyTorch's default initialisation unless told otherwise."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=kernel_init,
        bias_init=bias_init if bias_init is not None else torch_bias_init(in_features),
        dtype=dtype,
        rngs=rngs,
    )


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes of an NHWC array: [B, H, W, C] -> [B, C].

    The references use fixed-size pools (`AvgPool2d(8)` etc.) that equal a global mean at
    their design resolution; the global mean keeps the classifier valid at other sizes.
    """
    return jnp.mean(x, axis=(1, 2))


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """ShuffleNet's channel shuffle on NHWC, the same permutation as the NCHW reference.

    Channel `j * (C // groups) + i` moves to position `i * groups + j`.
    """
    *lead, c = x.shape
    x = x.reshape(*lead, groups, c // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


def check_images(x: jax.Array, in_channels: int, model: str) -> None:
    """Raises `ValueError` unless `x` is an NHWC batch with `in_channels` channels."""
    if x.ndim != 4 or x.shape[-1] != in_channels:
        raise ValueError(
            f"{model} expects `x` of shape [batch, height, width, {in_channels}] (NHWC), "
            f"got shape {tuple(x.shape)}."
        )
