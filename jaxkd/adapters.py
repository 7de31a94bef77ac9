"""Trainable modules that feature losses need, trained with the student (Flax NNX).

They belong to the student side of training: their parameters go into the student's
optimizer and checkpoint, never the teacher's. BatchNorm layers follow `model.train()` /
`model.eval()` like the reference models, with PyTorch's defaults (momentum 0.1, i.e. Flax
momentum 0.9, and epsilon 1e-5) so that ports of RepDistiller recipes behave the same.

- `HintAdapter`: FitNets regressor from the student's feature shape to the teacher's.
- `VIDRegressor`: VID's mean regressor with its per-channel variance parameter.
- `Embed`: linear projection + L2 normalisation (CRD's embedding heads).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxkd.losses._feature_utils import adaptive_avg_pool, l2_normalize


def _batch_norm(num_features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, rngs=rngs)


def _check_input(x: jax.Array, expected: tuple[int, ...], module: str) -> None:
    if x.ndim < len(expected) + 1 or tuple(x.shape[-len(expected) :]) != expected:
        raise ValueError(
            f"{module} expects `x` of shape [B, {', '.join(map(str, expected))}], "
            f"got x.shape={tuple(x.shape)}."
        )


class HintAdapter(nnx.Module):
    """Maps student features to the teacher's shape for the FitNets hint loss.

    For NHWC maps (shapes `(H, W, C)` without the batch axis) this is RepDistiller's
    `ConvReg`: a convolution chosen by the spatial sizes, then BatchNorm and ReLU.

    - student `H, W` twice the teacher's: 3x3 convolution, stride 2, padding 1;
    - student `H, W` half the teacher's: 4x4 transposed convolution, stride 2;
    - otherwise student `H, W` ≥ the teacher's: a `(1 + H_s − H_t) x (1 + W_s − W_t)`
      valid convolution (1x1 when the sizes are equal);
    - a student map smaller than the teacher's in any other ratio is an error.

    For vectors (shapes `(D,)`) it is a Dense layer on the last axis (so `[B, D]` and
    `[B, L, D]` both work), then optional BatchNorm and ReLU; RepDistiller's `Regress` is
    `use_bn=False`.

    Example::

        adapter = HintAdapter((16, 16, 32), (8, 8, 64), rngs=nnx.Rngs(0))
        loss = jaxkd.losses.hint(adapter(student_map), teacher_map)

    Args:
      student_shape: student feature shape without the batch axis, `(H, W, C)` or `(D,)`.
      teacher_shape: teacher feature shape without the batch axis, same rank.
      use_bn: apply BatchNorm after the projection (ConvReg does).
      use_relu: apply ReLU last (ConvReg's default; disable for signed teacher features).
      rngs: parameter initialisation keys.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        use_bn: bool = True,
        use_relu: bool = True,
        rngs: nnx.Rngs,
    ):
        self.student_shape = tuple(int(d) for d in student_shape)
        self.teacher_shape = tuple(int(d) for d in teacher_shape)
        ranks = {len(self.student_shape), len(self.teacher_shape)}
        if ranks not in ({1}, {3}):
            raise ValueError(
                "`student_shape` and `teacher_shape` must both be (H, W, C) or both (D,), got "
                f"student_shape={self.student_shape} and teacher_shape={self.teacher_shape}."
            )
        self.use_relu = use_relu
        c_in, c_out = self.student_shape[-1], self.teacher_shape[-1]
        if len(self.student_shape) == 1:
            self.proj = nnx.Linear(c_in, c_out, rngs=rngs)
        else:
            self.proj = self._conv(c_in, c_out, rngs)
        self.bn = _batch_norm(c_out, rngs) if use_bn else None

    def _conv(self, c_in: int, c_out: int, rngs: nnx.Rngs) -> nnx.Module:
        (s_h, s_w, _), (t_h, t_w, _) = self.student_shape, self.teacher_shape
        if (s_h, s_w) == (2 * t_h, 2 * t_w):
            return nnx.Conv(c_in, c_out, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs)
        if (2 * s_h, 2 * s_w) == (t_h, t_w):
            # SAME padding with stride 2 doubles the size, like PyTorch's (k=4, s=2, p=1).
            return nnx.ConvTranspose(c_in, c_out, (4, 4), strides=2, padding="SAME", rngs=rngs)
        if s_h >= t_h and s_w >= t_w:
            kernel = (1 + s_h - t_h, 1 + s_w - t_w)
            return nnx.Conv(c_in, c_out, kernel, padding="VALID", rngs=rngs)
        raise ValueError(
            "HintAdapter cannot map a student map smaller than the teacher's unless it is exactly "
            f"half its size, got student_shape={self.student_shape} and "
            f"teacher_shape={self.teacher_shape}."
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns the adapted features, `[B, *teacher_shape]` (or `[..., D_t]` for vectors)."""
        expected = self.student_shape if len(self.student_shape) == 3 else self.student_shape[-1:]
        _check_input(x, expected, "HintAdapter")
        y = self.proj(x)
        if self.bn is not None:
            y = self.bn(y)
        return nnx.relu(y) if self.use_relu else y


class VIDRegressor(nnx.Module):
    """VID's regressor of the teacher feature's mean, with the variance parameter.

    Three bias-free 1x1 convolutions with ReLUs in between (a 1x1 convolution on NHWC maps
    is a Dense layer on the channel axis, so this also works on `[B, D]` vectors), and
    `log_scale` `[C_t]` initialised so that `softplus(log_scale) + eps = init_pred_var`,
    as RepDistiller's `VIDLoss`. A call returns both, so that a functional apply of the
    module (e.g. `jaxkd.engine.adapter_from_nnx`) hands the loss everything it needs::

        regressor = VIDRegressor(32, 64, rngs=nnx.Rngs(0))
        mean, log_scale = regressor(s)
        loss = jaxkd.losses.vid(mean, t, log_scale, eps=regressor.eps)

    Args:
      in_features: student channels `C_s`.
      out_features: teacher channels `C_t`.
      mid_features: hidden width (default `out_features`, as RepDistiller uses it).
      init_pred_var: initial variance (RepDistiller: 5.0).
      eps: variance floor, to be passed on to `vid` (RepDistiller: 1e-5).
      spatial_shape: optional teacher `(H, W)`; larger student maps are average-pooled to it
        before the regression, as RepDistiller does.
      rngs: parameter initialisation keys.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        mid_features: int | None = None,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
        spatial_shape: Sequence[int] | None = None,
        rngs: nnx.Rngs,
    ):
        mid = out_features if mid_features is None else mid_features
        self.in_features = in_features
        self.eps = eps
        self.spatial_shape = None if spatial_shape is None else tuple(spatial_shape)
        self.layers = nnx.List(
            [
                nnx.Linear(in_features, mid, use_bias=False, rngs=rngs),
                nnx.Linear(mid, mid, use_bias=False, rngs=rngs),
                nnx.Linear(mid, out_features, use_bias=False, rngs=rngs),
            ]
        )
        # Inverse softplus of (init_pred_var - eps), computed in float64 once.
        init = float(np.log(np.expm1(init_pred_var - eps)))
        self.log_scale = nnx.Param(jnp.full((out_features,), init, jnp.float32))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns `(mean, log_scale)`: the predicted mean of the teacher feature
        (`[B, H, W, C_t]` or `[B, C_t]`) and the variance parameter `[C_t]`."""
        _check_input(x, (self.in_features,), "VIDRegressor")
        if self.spatial_shape is not None and x.ndim == 4:
            target = tuple(min(a, b) for a, b in zip(x.shape[1:3], self.spatial_shape, strict=True))
            x = adaptive_avg_pool(x, target)
        *hidden, last = self.layers
        for layer in hidden:
            x = nnx.relu(layer(x))
        return last(x), self.log_scale[...]

    def variance(self) -> jax.Array:
        """The per-channel variance `softplus(log_scale) + eps` `[C_t]`."""
        return jax.nn.softplus(self.log_scale[...]) + self.eps


class Embed(nnx.Module):
    """Linear projection followed by L2 normalisation (CRD's embedding head).

    Inputs are flattened to `[B, in_features]` first, so `[B, D]` vectors and `[B, H, W, C]`
    maps with `H·W·C = in_features` both work, as RepDistiller's `Embed`. Outputs have unit
    L2 norm (norms are floored at 1e-12 so a zero projection stays finite).

    Args:
      in_features: flattened input width.
      out_features: embedding width (CRD: 128).
      rngs: parameter initialisation keys.
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.in_features = in_features
        self.linear = nnx.Linear(in_features, out_features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns the L2-normalised embedding `[B, out_features]`."""
        if x.ndim < 2 or int(np.prod(x.shape[1:])) != self.in_features:
            raise ValueError(
                f"Embed expects `x` of shape [B, ...] with {self.in_features} features per "
                f"example, got x.shape={tuple(x.shape)}."
            )
        y = self.linear(x.reshape(x.shape[0], -1))
        return l2_normalize(y, axis=-1)
