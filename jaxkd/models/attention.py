"""Attention of the decoder-only transformer: RoPE, the KV cache pytree, GQA self-attention.

The cache holds every layer's keys and values in two stacked arrays of a fixed length and,
per sequence, how many positions are filled. Positions are data, not shapes: a step that
appends one token to each sequence has the same shapes at every position, so a decoding
loop compiles once, and sequences of a batch may sit at different positions (right-padded
prompts of different lengths).

References: Su et al. 2021, "RoFormer" (RoPE); Ainslie et al. 2023, "GQA"; Pope et al.
2022, "Efficiently Scaling Transformer Inference" (KV cache).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxkd.models._layers import Dtype


@struct.dataclass
class KVCache:
    """Keys and values of all layers for `batch` sequences of up to `max_length` tokens.

    Attributes:
      keys: `[num_layers, batch, max_length, num_kv_heads, head_dim]`, after RoPE.
      values: `[num_layers, batch, max_length, num_kv_heads, head_dim]`.
      lengths: `[batch]` int32, the filled positions of each sequence; the next token of
        sequence b is written at position `lengths[b]`. Entries at or past `lengths[b]`
        are stale and never attended to.
    """

    keys: jax.Array
    values: jax.Array
    lengths: jax.Array

    @classmethod
    def create(
        cls,
        *,
        num_layers: int,
        batch_size: int,
        max_length: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: jnp.dtype | type = jnp.float32,
    ) -> KVCache:
        """An empty cache (all lengths 0)."""
        if batch_size < 1 or max_length < 1:
            raise ValueError(
                f"`batch_size` and `max_length` must be positive, got batch_size={batch_size}, "
                f"max_length={max_length}."
            )
        shape = (num_layers, batch_size, max_length, num_kv_heads, head_dim)
        return cls(
            keys=jnp.zeros(shape, dtype),
            values=jnp.zeros(shape, dtype),
            lengths=jnp.zeros((batch_size,), jnp.int32),
        )

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def max_length(self) -> int:
        return self.keys.shape[2]

    def write(
        self, layer: int, positions: jax.Array, keys: jax.Array, values: jax.Array
    ) -> KVCache:
        """Stores one layer's new keys and values `[B, T, K, H]` at `positions` `[B, T]`.

        Positions past `max_length` are dropped; callers bound the total length beforehand.
        """
        rows = jnp.arange(self.batch_size)[:, None]
        # One scatter into the stacked buffer: inside a loop XLA updates it in place.
        new_keys = self.keys.at[layer, rows, positions].set(
            keys.astype(self.keys.dtype), mode="drop"
        )
        new_values = self.values.at[layer, rows, positions].set(
            values.astype(self.values.dtype), mode="drop"
        )
        return self.replace(keys=new_keys, values=new_values)

    def attention_mask(self, positions: jax.Array) -> jax.Array:
        """`[B, 1, T, max_length]` bool: query at position p sees cache slots 0..p.

        Slots below `lengths` hold earlier tokens and slots from `lengths` to p hold the
        tokens being written in this call, so every slot a query sees is filled.
        """
        slots = jnp.arange(self.max_length)
        return (slots[None, None, :] <= positions[:, :, None])[:, None]


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding in the Llama/Qwen ("rotate half") layout.

    With x = [x1, x2] split at the middle of the head dimension H and
    w_i = theta^(-2i/H), position p rotates each pair (x1_i, x2_i) by angle p · w_i:
    [x1 cos - x2 sin, x2 cos + x1 sin]. So <rope(q, m), rope(k, n)> depends on m - n only.

    Args:
      x: `[B, T, heads, H]` queries or keys.
      positions: `[B, T]` integer positions.
      theta: the RoPE base.

    Returns:
      The rotated array, shape and dtype of `x` (computed in float32).

    References:
      Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding".
    """
    half = x.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, half]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def dense(
    in_f: int,
    out_f: int,
    std: float,
    *,
    rngs: nnx.Rngs,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    bias: bool = False,
) -> nnx.Linear:
    """A Linear layer with N(0, std^2) weights (GPT-2/Llama initialisation)."""
    return nnx.Linear(
        in_f,
        out_f,
        use_bias=bias,
        kernel_init=nnx.initializers.normal(std),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE; optionally reads and writes a `KVCache`."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        rope_theta: float,
        qkv_bias: bool,
        out_std: float,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_theta = rope_theta
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.q_proj = dense(dim, num_heads * head_dim, 0.02, bias=qkv_bias, **kw)
        self.k_proj = dense(dim, num_kv_heads * head_dim, 0.02, bias=qkv_bias, **kw)
        self.v_proj = dense(dim, num_kv_heads * head_dim, 0.02, bias=qkv_bias, **kw)
        self.o_proj = dense(num_heads * head_dim, dim, out_std, **kw)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> tuple[jax.Array, KVCache | None]:
        """softmax(q k^T / sqrt(H) + mask) v over the heads, then the output projection.

        Args:
          x: `[B, T, dim]` normalised inputs.
          positions: `[B, T]` RoPE positions of the inputs.
          mask: bool `[B or 1, 1, T, S]`, True where a query may attend to a key; S = T
            without a cache, the cache's `max_length` with one.
          cache: when given, the new keys and values are written at `positions` of
            `layer` and the queries attend over the whole cache.
          layer: this layer's index in the cache.

        Returns:
          `([B, T, dim] output, the updated cache or None)`.
        """
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        q = apply_rope(q, positions, self.rope_theta)
        k = apply_rope(k, positions, self.rope_theta)
        if cache is not None:
            cache = cache.write(layer, positions, k, v)
            k, v = cache.keys[layer].astype(q.dtype), cache.values[layer].astype(q.dtype)
        # jax.nn.dot_product_attention groups the query heads over the K/V heads itself and
        # runs the softmax in float32.
        out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), cache
