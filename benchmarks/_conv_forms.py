"""Other ways to write a 3×3, stride-1, SAME convolution in XLA, for `benchmarks/conv.py`.

Each takes NHWC inputs and an HWIO kernel and equals `lax.conv_general_dilated` up to float
rounding (tests/test_benchmarks_conv.py checks it). They exist to measure whether XLA:CPU runs
any of them faster than its own convolution; jaxkd's models do not use them.

- `winograd`: Lavin & Gray's F(m×m, 3×3) minimal filtering (m = 2 or 4). Per m×m output
  tile it needs (m + 2)² multiplies per channel pair instead of 9m²: 2.25× fewer for m = 2,
  4× fewer for m = 4, paid for by input and output transforms.
- `im2col`: one matrix product over the nine shifted copies of the input stacked along
  channels, [N·H·W, 9·C] @ [9·C, C_out].
- `shifted_dots`: the sum of nine [N·H·W, C] @ [C, C_out] products, one per kernel tap.

References:
  Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# F(2×2, 3×3) and F(4×4, 3×3) (Lavin & Gray, Sec. 4): Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A.
_WINOGRAD = {
    2: (
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32),
    ),
    4: (
        np.array(
            [
                [4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1],
            ],
            np.float32,
        ),
        np.array(
            [
                [1 / 4, 0, 0],
                [-1 / 6, -1 / 6, -1 / 6],
                [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6],
                [1 / 24, -1 / 12, 1 / 6],
                [0, 0, 1],
            ],
            np.float32,
        ),
        np.array(
            [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
            np.float32,
        ),
    ),
}


def xla_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """XLA's own convolution: NHWC input, HWIO kernel, stride 1, SAME padding."""
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _combine(matrix: np.ndarray, terms: Sequence[jax.Array]) -> list[jax.Array]:
    """`matrix @ terms` over a list of arrays, skipping zero coefficients (the transforms
    are sparse, so this is a few additions per output instead of a dense product)."""
    out = []
    for row in matrix:
        acc = None
        for c, t in zip(row, terms, strict=True):
            if c == 0:
                continue
            t = t if c == 1 else -t if c == -1 else float(c) * t
            acc = t if acc is None else acc + t
        out.append(acc)
    return out


def winograd(x: jax.Array, w: jax.Array, m: int = 2) -> jax.Array:
    """Winograd F(m×m, 3×3) convolution, m ∈ {2, 4}: (m + 2)² batched channel products."""
    b_t, g, a_t = _WINOGRAD[m]
    a = m + 2
    n, h, wd, c = x.shape
    th, tw = -(-h // m), -(-wd // m)
    xp = jnp.pad(x, ((0, 0), (1, th * m + 1 - h), (1, tw * m + 1 - wd), (0, 0)))
    # d[i][j]: the input value at offset (i, j) of every tile, [N, th, tw, C].
    d = [[xp[:, i : i + m * th : m, j : j + m * tw : m, :] for j in range(a)] for i in range(a)]
    cols = [_combine(b_t, [d[i][j] for i in range(a)]) for j in range(a)]
    v = [_combine(b_t, [cols[j][p] for j in range(a)]) for p in range(a)]
    v = jnp.stack([t for row in v for t in row]).reshape(a * a, n * th * tw, c)
    u = jnp.einsum("pi,qj,ijco->pqco", g, g, w).reshape(a * a, c, -1)
    prod = jnp.einsum("knc,kco->kno", v, u).reshape(a, a, n, th, tw, -1)
    rows = _combine(a_t, [prod[p] for p in range(a)])
    y = [_combine(a_t, [rows[r][q] for q in range(a)]) for r in range(m)]
    y = jnp.stack([jnp.stack(row, axis=3) for row in y], axis=2)  # [N, th, m, tw, m, C_out]
    return y.reshape(n, th * m, tw * m, -1)[:, :h, :wd]


def _taps(x: jax.Array) -> list[jax.Array]:
    _, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, i : i + h, j : j + wd, :] for i in range(3) for j in range(3)]


def im2col(x: jax.Array, w: jax.Array) -> jax.Array:
    """One [N·H·W, 9·C] @ [9·C, C_out] product over the stacked kernel taps."""
    n, h, wd, c = x.shape
    patches = jnp.concatenate(_taps(x), axis=-1).reshape(-1, 9 * c)
    return (patches @ w.reshape(9 * c, -1)).reshape(n, h, wd, -1)


def shifted_dots(x: jax.Array, w: jax.Array) -> jax.Array:
    """Nine [N·H·W, C] @ [C, C_out] products, one per kernel tap, summed."""
    taps = _taps(x)
    return sum(jnp.einsum("nhwc,co->nhwo", t, w[k // 3, k % 3]) for k, t in enumerate(taps))


FORWARD_FORMS = {
    "winograd F(2,3)": lambda x, w: winograd(x, w, 2),
    "winograd F(4,3)": lambda x, w: winograd(x, w, 4),
    "im2col": im2col,
    "9 shifted dots": shifted_dots,
}
