"""Convolutions whose kernel gradient XLA:CPU computes without a costly transpose.

For y = conv(x, W) (stride 1), the kernel gradient is

    dW[a, b, i, o] = Σ_{n, h, w} x_pad[n, h + a, w + b, i] · dy[n, h, w, o],

a convolution contracting over the batch. JAX writes it with x as the input and dy as the
window, and XLA:CPU's convolution kernels then want x with the batch innermost: a layout
transpose into which XLA fuses the batch norm, residual add and ReLU that produced x,
reading every one of their operands in transposed order. In a CIFAR ResNet train step
these transposes take about a third of the time (`benchmarks/trace.py`).

The same sum is also a convolution of dy (batch over output channels, the batch as the
contracted feature) with x as the window, reversed in space:

    dW[a, b, i, o] = conv(dy, x)[o, k − 1 − a, k − 1 − b, i],

with dy padded by k − 1 − p on each side (p: the forward padding). Then only dy, one
materialised array, is transposed with the batch innermost, and x keeps its channels
innermost. `conv_general_dilated` computes the kernel gradient this way, on CPU only
(`lax.platform_dependent`), for stride-1 undilated ungrouped k×k convolutions (k > 1),
inside `swapped_kernel_gradients()`, which `jaxkd.engine`'s train step enters. Everywhere
else it is `lax.conv_general_dilated` itself: outside the context forward-mode
differentiation (`jax.jvp`, `jax.jacfwd`) works as usual, which a `custom_vjp` rule would
not allow. Strided convolutions keep XLA's gradient: splitting them into stride-1 phases
made the resnet8x4 train step 3.5 × slower.

References:
  Dumoulin & Visin, "A guide to convolution arithmetic for deep learning", 2016 (the
  gradient of a convolution is a convolution).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax import lax

_SWAP = contextvars.ContextVar("jaxkd_swapped_kernel_gradients", default=False)
_NHWC = ("NHWC", "HWIO", "NHWC")
_SWAPPABLE_ARGS = {
    "window_strides", "padding", "lhs_dilation", "rhs_dilation", "dimension_numbers",
    "feature_group_count", "batch_group_count", "precision", "preferred_element_type",
}  # fmt: skip


@contextlib.contextmanager
def swapped_kernel_gradients(enabled: bool = True) -> Iterator[None]:
    """Within it, jaxkd's convolution layers traced for reverse-mode use the swapped kernel
    gradient on CPU (see the module docstring); read when a function is traced, not run."""
    token = _SWAP.set(enabled)
    try:
        yield
    finally:
        _SWAP.reset(token)


def _is_unit(values: Sequence[int] | None) -> bool:
    return values is None or all(v == 1 for v in values)


def _swappable(lhs: jax.Array, rhs: jax.Array, conv: dict[str, Any]) -> bool:
    if lhs.ndim != 4 or isinstance(conv["padding"], str) or conv["preferred_element_type"]:
        return False
    if any(v is not None for k, v in conv.items() if k not in _SWAPPABLE_ARGS):
        return False  # e.g. `out_sharding`
    units = ("window_strides", "lhs_dilation", "rhs_dilation")
    if not all(_is_unit(conv[k]) for k in units) or rhs.shape[:2] == (1, 1):
        return False
    if conv["feature_group_count"] != 1 or conv["batch_group_count"] != 1:
        return False
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, conv["dimension_numbers"])
    return given == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    **extra: Any,
) -> jax.Array:
    """`lax.conv_general_dilated`, with the swapped kernel gradient where it applies.

    Same arguments and value as `lax.conv_general_dilated`; NHWC inputs and HWIO kernels
    (Flax's layout) with explicit padding qualify (see the module docstring).

    References:
      JAX, `jax.lax.conv_general_dilated`.
    """
    conv = dict(
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
        **extra,
    )
    if not (_SWAP.get() and _swappable(lhs, rhs, conv)):
        return lax.conv_general_dilated(lhs, rhs, **conv)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(pads, precision, lhs, rhs)


def _plain(pads, precision, x, w):
    return lax.conv_general_dilated(
        x, w, (1, 1), pads, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _conv(pads, precision, x, w):
    return _plain(pads, precision, x, w)


def _conv_fwd(pads, precision, x, w):
    return _plain(pads, precision, x, w), (x, w)


def _swapped_kernel_gradient(pads, precision, x, dy, k):
    # out[o, a', b', i] = Σ dy_pad[n, h + a', w + b', o] · x[n, h, w, i] = dW[k−1−a', k−1−b', i, o].
    flipped = lax.conv_general_dilated(
        dy,
        x,
        (1, 1),
        [(k[d] - 1 - lo, k[d] - 1 - hi) for d, (lo, hi) in enumerate(pads)],
        dimension_numbers=("CHWN", "IHWO", "NHWC"),
        precision=precision,
    )
    return flipped[:, ::-1, ::-1, :].transpose(1, 2, 3, 0)


def _conv_bwd(pads, precision, residuals, dy):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda x_: _plain(pads, precision, x_, w), x)
    (dx,) = input_vjp(dy)

    def xla_kernel_gradient(x, dy):
        _, kernel_vjp = jax.vjp(lambda w_: _plain(pads, precision, x, w_), w)
        return kernel_vjp(dy)[0]

    def swapped(x, dy):
        return _swapped_kernel_gradient(pads, precision, x, dy, w.shape[:2])

    dw = lax.platform_dependent(x, dy, cpu=swapped, default=xla_kernel_gradient)
    return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)
