"""Float64 NumPy building blocks and shared checks for the feature-loss tests."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def np_l2_normalize(x: np.ndarray, axis: int) -> np.ndarray:
    norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    return x / np.maximum(norm, 1e-12)


def np_adaptive_pool(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's adaptive_avg_pool2d on an NHWC array, written as explicit loops."""
    batch, height, width, channels = x.shape
    out = np.zeros((batch, out_h, out_w, channels), np.float64)
    for i in range(out_h):
        h0, h1 = int(np.floor(i * height / out_h)), int(np.ceil((i + 1) * height / out_h))
        for j in range(out_w):
            w0, w1 = int(np.floor(j * width / out_w)), int(np.ceil((j + 1) * width / out_w))
            out[:, i, j, :] = x[:, h0:h1, w0:w1, :].mean(axis=(1, 2))
    return out


def np_pool_to_common(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])
    return np_adaptive_pool(a, h, w), np_adaptive_pool(b, h, w)


@dataclasses.dataclass(frozen=True)
class Case:
    """One loss configuration: the jax function (static options bound), float32 inputs and
    the float64 NumPy reference of the same formula."""

    fn: Callable
    args: tuple[np.ndarray, ...]
    ref: Callable
    grad_argnums: tuple[int, ...] = (0,)
    # Which args carry the batch axis (masks and sub-batches apply to them).
    batched: tuple[bool, ...] = (True, True)
    # Args with the teacher replaced by the student, where the loss is then zero.
    equal_args: tuple[np.ndarray, ...] | None = None
    nonnegative: bool = True

    def ref64(self, *args: np.ndarray) -> float:
        return float(self.ref(*(np.asarray(a, np.float64) for a in args)))

    # Compiled once per case and reused across tests with the same shapes: compilation,
    # not arithmetic, dominates these tests on CPU.
    @functools.cached_property
    def jit(self) -> Callable:
        return jax.jit(self.fn)

    @functools.cached_property
    def value_and_grad(self) -> Callable:
        return jax.jit(jax.value_and_grad(self.fn, argnums=self.grad_argnums))

    @functools.cached_property
    def reductions(self) -> Callable:
        """`(args, mask) -> (mean, sum, none)` in one compiled function."""

        def run(args, mask):
            return tuple(self.fn(*args, mask=mask, reduction=r) for r in ("mean", "sum", "none"))

        return jax.jit(run)


def assert_grad_matches_reference(case: Case, seed: int = 0, step: float = 1e-5) -> None:
    """Compares jax.grad with a float64 central difference of the NumPy reference along a
    random direction in the differentiated arguments."""
    _, grads = case.value_and_grad(*case.args)
    rng = np.random.default_rng(seed)
    directions = {i: rng.normal(size=case.args[i].shape) for i in case.grad_argnums}
    analytic = sum(
        float(jnp.vdot(g, directions[i])) for g, i in zip(grads, case.grad_argnums, strict=True)
    )

    def shifted(sign):
        args = [np.asarray(a, np.float64) for a in case.args]
        for i, d in directions.items():
            args[i] = args[i] + sign * step * d
        return case.ref64(*args)

    numeric = (shifted(1.0) - shifted(-1.0)) / (2 * step)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-5)


def subset(args: tuple[np.ndarray, ...], batched: tuple[bool, ...], keep: np.ndarray):
    return tuple(a[keep] if b else a for a, b in zip(args, batched, strict=True))


# ---------------------------------------------------------------- checks shared by the test files


def assert_matches_reference(fn: Callable, case: Case) -> None:
    """`fn` (the case's function, possibly jitted) gives a float32 scalar equal to the float64
    reference."""
    value = fn(*case.args)
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(value, case.ref64(*case.args), rtol=2e-5, atol=1e-7)


def assert_vmap_matches_single(case: Case) -> None:
    """vmap over two stacked problems equals the two problems run one at a time."""
    other = tuple(0.5 * a + 0.25 for a in case.args)
    stacked = tuple(np.stack([a, b]) for a, b in zip(case.args, other, strict=True))
    values = jax.jit(jax.vmap(case.fn))(*stacked)
    single = case.jit
    np.testing.assert_allclose(values, [single(*case.args), single(*other)], rtol=1e-5)


def assert_bfloat16_gives_float32(case: Case, atol: float = 0.0) -> None:
    """bfloat16 inputs give a float32 result equal to that of the same values in float32."""
    fn = case.jit
    half = tuple(jnp.asarray(a, jnp.bfloat16) for a in case.args)
    value = fn(*half)
    assert value.dtype == jnp.float32
    widened = fn(*(a.astype(jnp.float32) for a in half))
    np.testing.assert_allclose(value, widened, rtol=1e-5, atol=atol)


def assert_finite_and_accurate(case: Case, large: Case) -> None:
    """`large` (the same case at magnitude 1e4) has finite values and gradients and matches
    the reference; `case`'s compiled functions are reused (same shapes: no recompile)."""
    value, grads = case.value_and_grad(*large.args)
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_allclose(value, large.ref64(*large.args), rtol=1e-4)


def assert_mask_equals_sub_batch(case: Case) -> None:
    """Masking every other example equals the loss of the valid sub-batch, for all reductions."""
    batch = case.args[0].shape[0]
    keep = np.arange(batch) % 2 == 0
    mean, total, per_example = case.reductions(case.args, keep)
    np.testing.assert_allclose(mean, case.ref64(*subset(case.args, case.batched, keep)), rtol=1e-5)
    assert per_example.shape == (batch,)
    np.testing.assert_array_equal(per_example[~keep], 0.0)
    np.testing.assert_allclose(total, per_example.sum(), rtol=1e-5)
    np.testing.assert_allclose(per_example.sum() / keep.sum(), mean, rtol=1e-5)
    # A fully padded batch gives 0, not NaN.
    np.testing.assert_array_equal(case.reductions(case.args, np.zeros(batch, bool))[0], 0.0)


def raises_naming(error, fn, *args, names, shapes, **kwargs) -> None:
    """`fn(*args, **kwargs)` raises `error` with every name and shape in its message."""
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for item in (*names, *(str(tuple(s)) for s in shapes)):
        assert item in message, f"{item!r} not in {message!r}"
