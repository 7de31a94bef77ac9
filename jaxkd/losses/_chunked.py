"""Per-token maps over a flattened token axis, optionally chunk by chunk.

A token-level loss is a row-wise function `fn(params, *rows) -> values` of `[n, ...]` arrays
(student logits, teacher logits, top-k ids, ...) to `[n]` per-token values. Applied to all
`N = B·L` tokens at once, the float32 softmax intermediates of a `[N, V]` logit array are
several times the size of the logits themselves (at V = 151,936, 4096 tokens are 2.5 GB per
float32 array). `token_map` with a `chunk_size` instead walks over the token axis in chunks
of that many rows, so only one chunk's intermediates are alive at a time, in the forward pass
and in the backward pass.

The backward pass is a custom VJP rather than `jax.checkpoint` around a `lax.scan` body: the
transpose of a `dynamic_slice` of a closed-over `[N, V]` array inside a scan accumulates into a
full-size cotangent every step, whereas here each chunk's gradient is written once, in place,
into one buffer per differentiated input. Inputs that are not differentiated (a frozen teacher,
integer ids) get no gradient buffer at all. Token counts that are not a multiple of the chunk
size are handled without padding (which would copy the logits): the last chunk is shifted back
to end at row N, and the rows it shares with the previous chunk are counted once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxkd.losses import _checks

RowFn = Callable[..., jax.Array]


def check_chunk_size(chunk_size: int | None) -> None:
    """Raises unless `chunk_size` is None or a positive Python int (it is static)."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(
            f"`chunk_size` must be None or a positive int (a static value), got "
            f"{chunk_size!r} of type {type(chunk_size).__name__}."
        )
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be None or a positive int, got {chunk_size}.")


def token_map(
    fn: RowFn,
    params: Sequence[jax.typing.ArrayLike],
    arrays: Sequence[jax.Array],
    *,
    chunk_size: int | None = None,
) -> jax.Array:
    """Applies the row-wise `fn(params, *rows) -> [n]` to `arrays`, optionally in chunks.

    `fn` must treat rows independently (row i of the output depends only on row i of each
    array), which holds for every per-token loss. `params` are scalars shared by all rows
    (temperature, beta, ...); they may be traced and are differentiated like the arrays.

    Args:
      fn: row-wise function of `(params, *rows)` returning one value per row.
      params: scalar hyperparameters passed unchanged to every call of `fn`.
      arrays: arrays with the same leading (token) dimension `N`.
      chunk_size: None for one call on all rows; otherwise the number of rows per chunk.
        Chunked evaluation supports reverse-mode differentiation (grad, vjp), not jvp.

    Returns:
      `[N]` per-row values.
    """
    check_chunk_size(chunk_size)
    params = tuple(jnp.asarray(p) for p in params)
    arrays = tuple(arrays)
    num_rows = arrays[0].shape[0]
    if chunk_size is None or chunk_size >= num_rows:
        return fn(params, *arrays)
    return _chunked_map(fn, chunk_size, params, arrays)


def token_loss(
    fn: RowFn,
    params: Sequence[jax.typing.ArrayLike],
    arrays: Sequence[jax.typing.ArrayLike],
    *,
    mask: jax.typing.ArrayLike | None,
    reduction: _checks.Reduction,
    chunk_size: int | None,
) -> jax.Array:
    """`token_map` over `[B, L, ...]` arrays as `B·L` rows, reduced over the tokens of `mask`.

    Half-precision arrays stay half precision here: `fn` promotes its own rows (one chunk at
    a time when chunking), so no float32 copy of a `[B, L, V]` array is made.

    Returns:
      `_checks.reduce` of the `[B, L]` per-token values: a scalar, or `[B, L]` for "none".
    """
    arrays = [jnp.asarray(a) for a in arrays]
    batch, length = arrays[0].shape[:2]
    rows = [a.reshape(-1, *a.shape[2:]) for a in arrays]
    values = token_map(fn, params, rows, chunk_size=chunk_size)
    return _checks.reduce(values.reshape(batch, length), mask, reduction)


def _chunk_start(index: jax.Array, chunk_size: int, num_rows: int) -> jax.Array:
    # The last chunk is shifted back so that it ends at `num_rows` instead of padding.
    return jnp.minimum(index * chunk_size, num_rows - chunk_size)


def _is_half(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize == 2


def _to_loop(a: jax.Array, bitcast: bool) -> jax.Array:
    return lax.bitcast_convert_type(a, jnp.uint16) if bitcast and _is_half(a.dtype) else a


def _from_loop(a: jax.Array, dtype: Any) -> jax.Array:
    return a if a.dtype == dtype else lax.bitcast_convert_type(a, dtype)


def _slice_rows(
    loop_arrays: Sequence[jax.Array], dtypes: Sequence[Any], start: jax.Array, size: int
) -> list[jax.Array]:
    return [
        _from_loop(lax.dynamic_slice_in_dim(a, start, size, axis=0), d)
        for a, d in zip(loop_arrays, dtypes, strict=True)
    ]


def _per_platform(impl: Callable[..., Any], arrays: Sequence[jax.Array], *operands: Any) -> Any:
    """Runs `impl(bitcast, *operands)`, with bitcast=True only when lowering for CPU.

    XLA:CPU has no bfloat16/float16 dynamic-slice: it converts the whole `[N, V]` operand to
    float32 and hoists that conversion out of the loop, a full float32 copy of the logits.
    Carried as same-width unsigned integers (`bitcast=True`), half-precision arrays are
    sliced as integers and converted one chunk at a time; the bitcast itself costs one copy
    at the input's own width on CPU. Accelerators slice half precision natively and get the
    arrays as they are.
    """
    if not any(_is_half(a.dtype) for a in arrays):
        return impl(False, *operands)
    return lax.platform_dependent(*operands, cpu=partial(impl, True), default=partial(impl, False))


def _forward(fn: RowFn, chunk_size: int, params: tuple, arrays: tuple) -> jax.Array:
    return _per_platform(partial(_forward_impl, fn, chunk_size), arrays, params, arrays)


def _forward_impl(
    fn: RowFn, chunk_size: int, bitcast: bool, params: tuple, arrays: tuple
) -> jax.Array:
    num_rows = arrays[0].shape[0]
    num_chunks = -(-num_rows // chunk_size)
    dtypes = [a.dtype for a in arrays]
    loop_arrays = [_to_loop(a, bitcast) for a in arrays]
    chunk_shapes = [jax.ShapeDtypeStruct((chunk_size, *a.shape[1:]), a.dtype) for a in arrays]
    out_aval = jax.eval_shape(fn, params, *chunk_shapes)

    def body(i, out):
        start = _chunk_start(i, chunk_size, num_rows)
        rows = _slice_rows(loop_arrays, dtypes, start, chunk_size)
        # Rows shared by the shifted last chunk are recomputed identically and overwritten.
        return lax.dynamic_update_slice_in_dim(out, fn(params, *rows), start, axis=0)

    init = jnp.zeros((num_rows, *out_aval.shape[1:]), out_aval.dtype)
    return lax.fori_loop(0, num_chunks, body, init)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunked_map(fn: RowFn, chunk_size: int, params: tuple, arrays: tuple) -> jax.Array:
    return _forward(fn, chunk_size, params, arrays)


def _is_primal(x: Any) -> bool:
    return isinstance(x, jax.custom_derivatives.CustomVJPPrimal)


def _chunked_map_fwd(fn: RowFn, chunk_size: int, params: tuple, arrays: tuple):
    primals = (params, arrays)
    values = jax.tree.map(lambda p: p.value, primals, is_leaf=_is_primal)
    # Which inputs are differentiated is static; it is kept in the residuals' tree structure
    # (`()` = differentiated, `None` = not) so that the backward pass allocates no gradient
    # buffer for a frozen teacher.
    flags = jax.tree.map(lambda p: () if p.perturbed else None, primals, is_leaf=_is_primal)
    # The residuals are the inputs themselves: nothing of size [N, V] is added.
    return _forward(fn, chunk_size, *values), (values, flags)


def _chunked_map_bwd(fn: RowFn, chunk_size: int, residuals, g: jax.Array):
    (params, arrays), (param_flags, array_flags) = residuals
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        return (None,) * len(params), (None,) * len(arrays)
    diff_params = tuple(i for i, f in enumerate(param_flags) if f is not None)
    diff_arrays = tuple(i for i, f in enumerate(array_flags) if f is not None)
    impl = partial(_backward_impl, fn, chunk_size, diff_params, diff_arrays)
    param_cts, grads = _per_platform(impl, arrays, params, arrays, g)

    param_out: list[Any] = [None] * len(params)
    for i, ct in zip(diff_params, param_cts, strict=True):
        param_out[i] = ct
    array_out: list[Any] = [None] * len(arrays)
    for i, ct in zip(diff_arrays, grads, strict=True):
        array_out[i] = ct
    return tuple(param_out), tuple(array_out)


def _backward_impl(
    fn: RowFn,
    chunk_size: int,
    diff_params: tuple[int, ...],
    diff_arrays: tuple[int, ...],
    bitcast: bool,
    params: tuple,
    arrays: tuple,
    g: jax.Array,
):
    num_rows = arrays[0].shape[0]
    num_chunks = -(-num_rows // chunk_size)
    dtypes = [a.dtype for a in arrays]
    loop_arrays = [_to_loop(a, bitcast) for a in arrays]

    def chunk_vjp(rows, g_chunk):
        def restricted(p_diff, r_diff):
            p_all, r_all = list(params), list(rows)
            for i, p in zip(diff_params, p_diff, strict=True):
                p_all[i] = p
            for i, r in zip(diff_arrays, r_diff, strict=True):
                r_all[i] = r
            return fn(tuple(p_all), *r_all)

        primal_params = [params[i] for i in diff_params]
        primal_rows = [rows[i] for i in diff_arrays]
        _, vjp = jax.vjp(restricted, primal_params, primal_rows)
        return vjp(g_chunk)

    def body(j, carry):
        param_cts, grads = carry
        # Reverse order: the shifted last chunk goes first, giving the rows it shares with the
        # previous chunk zero cotangent (so parameter gradients count them once); the previous
        # chunk then overwrites those rows with their gradients.
        i = num_chunks - 1 - j
        start = _chunk_start(i, chunk_size, num_rows)
        owned = start + jnp.arange(chunk_size) >= i * chunk_size
        g_chunk = lax.dynamic_slice_in_dim(g, start, chunk_size, axis=0)
        g_chunk = jnp.where(owned.reshape(owned.shape + (1,) * (g.ndim - 1)), g_chunk, 0)
        rows = _slice_rows(loop_arrays, dtypes, start, chunk_size)
        ct_params, ct_rows = chunk_vjp(rows, g_chunk)
        param_cts = [a + c for a, c in zip(param_cts, ct_params, strict=True)]
        grads = [
            lax.dynamic_update_slice_in_dim(buf, _to_loop(ct, bitcast), start, axis=0)
            for buf, ct in zip(grads, ct_rows, strict=True)
        ]
        return param_cts, grads

    init = (
        [jnp.zeros_like(params[i]) for i in diff_params],
        [_to_loop(jnp.zeros_like(arrays[i]), bitcast) for i in diff_arrays],
    )
    param_cts, grads = lax.fori_loop(0, num_chunks, body, init)
    return param_cts, [_from_loop(b, dtypes[i]) for b, i in zip(grads, diff_arrays, strict=True)]


_chunked_map.defvjp(_chunked_map_fwd, _chunked_map_bwd, symbolic_zeros=True)
