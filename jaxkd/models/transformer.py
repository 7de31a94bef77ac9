"""A decoder-only transformer language model in the Llama/Qwen style, with a KV cache.

Pre-norm blocks of RMSNorm -> grouped-query attention with rotary position embeddings ->
residual, RMSNorm -> SwiGLU MLP -> residual; a final RMSNorm; an output head tied to the
token embedding or separate. `model(tokens)` returns logits `[B, L, V]`. Decoding runs
`prefill` over a (right-padded) prompt and then `decode_step` one token at a time on a
`KVCache` pytree whose positions are explicit data, so the step compiles once.

Features recorded under `nnx.capture` (see `jaxkd.models.forward_with_features`):
"block{i}" the residual stream after block i, `[B, L, dim]`, for i = 1..num_layers;
"hidden" the final normalised hidden state that feeds the head, `[B, L, dim]`.

References: Touvron et al. 2023, "LLaMA"; Qwen Team 2024, "Qwen2 Technical Report";
Su et al. 2021, "RoFormer" (RoPE); Shazeer 2020, "GLU Variants Improve Transformer" (SwiGLU);
Ainslie et al. 2023, "GQA"; Zhang & Sennrich 2019, "Root Mean Square Layer Normalization".
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkd.models._layers import Dtype
from jaxkd.models.attention import Attention, KVCache, dense
from jaxkd.models.core import FeatureModel


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes of a `Transformer`.

    Attributes:
      vocab_size: rows of the embedding and width of the logits (may exceed the
        tokenizer's vocabulary: see `jaxkd.text.mask_padded_vocab`).
      dim: width of the residual stream.
      num_layers: number of blocks.
      num_heads: query heads.
      num_kv_heads: key/value heads; `num_heads` must be a multiple. Equal to `num_heads`
        is multi-head attention, 1 is multi-query attention.
      hidden_dim: inner width of the SwiGLU MLP.
      max_seq_len: longest sequence the model accepts (prompt plus generated tokens).
      tie_embeddings: the head is the transposed token embedding (no separate weights).
      rope_theta: RoPE base; frequencies are theta^(-2i / head_dim).
      head_dim: width of one head; None is `dim // num_heads`.
      qkv_bias: biases on the query, key and value projections (Qwen2 has them, Llama not).
      norm_eps: RMSNorm epsilon.
    """

    vocab_size: int = 259
    dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    hidden_dim: int = 688
    max_seq_len: int = 512
    tie_embeddings: bool = True
    rope_theta: float = 10_000.0
    head_dim: int | None = None
    qkv_bias: bool = False
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if self.hidden_dim < 1 or self.max_seq_len < 1:
            raise ValueError(
                f"`hidden_dim` and `max_seq_len` must be positive, got hidden_dim="
                f"{self.hidden_dim}, max_seq_len={self.max_seq_len}."
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"`num_heads` ({self.num_heads}) must be a multiple of `num_kv_heads` "
                f"({self.num_kv_heads})."
            )
        if self.head_dim is None and self.dim % self.num_heads:
            raise ValueError(
                f"`dim` ({self.dim}) must be a multiple of `num_heads` ({self.num_heads}) "
                "unless `head_dim` is given."
            )
        if self.resolved_head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {self.resolved_head_dim}.")
        if not self.rope_theta > 0:
            raise ValueError(f"`rope_theta` must be > 0, got {self.rope_theta}.")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.num_heads


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, config: TransformerConfig, *, out_std: float, dtype, param_dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.gate_proj = dense(config.dim, config.hidden_dim, 0.02, **kw)
        self.up_proj = dense(config.dim, config.hidden_dim, 0.02, **kw)
        self.down_proj = dense(config.hidden_dim, config.dim, out_std, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(nnx.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: TransformerConfig, *, dtype, param_dtype, rngs):
        # GPT-2's scaled init of the projections into the residual stream keeps its
        # variance independent of depth.
        out_std = 0.02 / math.sqrt(2 * config.num_layers)
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        norm = {"epsilon": config.norm_eps, "dtype": dtype, "param_dtype": param_dtype}
        self.attn_norm = nnx.RMSNorm(config.dim, **norm, rngs=rngs)
        self.attn = Attention(
            config.dim,
            num_heads=config.num_heads,
            num_kv_heads=config.num_kv_heads,
            head_dim=config.resolved_head_dim,
            rope_theta=config.rope_theta,
            qkv_bias=config.qkv_bias,
            out_std=out_std,
            **kw,
        )
        self.mlp_norm = nnx.RMSNorm(config.dim, **norm, rngs=rngs)
        self.mlp = SwiGLU(config, out_std=out_std, **kw)

    def __call__(self, x, positions, mask, cache=None, layer=0):
        attn, cache = self.attn(self.attn_norm(x), positions, mask, cache, layer)
        h = x + attn
        return h + self.mlp(self.mlp_norm(h)), cache


def _check_tokens(tokens: jax.Array, name: str, rank: int) -> None:
    if tokens.ndim != rank or not jnp.issubdtype(tokens.dtype, jnp.integer):
        shape = "[batch, length]" if rank == 2 else "[batch]"
        raise ValueError(
            f"`{name}` must be integer token ids of shape {shape}, got dtype {tokens.dtype} "
            f"and shape {tuple(tokens.shape)}."
        )


class Transformer(FeatureModel):
    """Decoder-only transformer LM: `model(tokens) -> logits [B, L, vocab_size]`.

    Args:
      config: the sizes, a `TransformerConfig`.
      dtype: computation dtype (e.g. `jnp.bfloat16`); None computes in `param_dtype`.
        Norm statistics, RoPE and the attention softmax run in float32 regardless.
      param_dtype: storage dtype of the parameters.
      rngs: `nnx.Rngs` with a "params" stream.

    References:
      Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models".
    """

    def __init__(
        self,
        config: TransformerConfig,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"`config` must be a TransformerConfig, got {type(config).__name__}.")
        self.config = config
        kw = {"dtype": dtype, "param_dtype": param_dtype}
        self.embed = nnx.Embed(
            config.vocab_size,
            config.dim,
            embedding_init=nnx.initializers.normal(0.02),
            **kw,
            rngs=rngs,
        )
        self.blocks = nnx.List([Block(config, **kw, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = nnx.RMSNorm(config.dim, epsilon=config.norm_eps, **kw, rngs=rngs)
        self.lm_head = (
            None
            if config.tie_embeddings
            else dense(config.dim, config.vocab_size, 0.02, rngs=rngs, **kw)
        )
        self.feature_names = (*(f"block{i + 1}" for i in range(config.num_layers)), "hidden")

    def _logits(self, h: jax.Array) -> jax.Array:
        return self.embed.attend(h) if self.lm_head is None else self.lm_head(h)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Logits of every position under a causal mask.

        Args:
          tokens: `[B, L]` int token ids, L <= `max_seq_len`.
          positions: `[B, L]` int RoPE positions; None is 0..L-1 for every row.
          attention_mask: `[B, L]`, nonzero for real tokens; keys at zeros are ignored
            (padding). None attends to every earlier token.

        Returns:
          `[B, L, vocab_size]` logits in the computation dtype.
        """
        tokens = jnp.asarray(tokens)
        _check_tokens(tokens, "tokens", 2)
        b, length = tokens.shape
        if length > self.config.max_seq_len:
            raise ValueError(
                f"`tokens` has length {length}, more than max_seq_len={self.config.max_seq_len}."
            )
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        elif positions.shape != tokens.shape:
            raise ValueError(
                f"`positions` must have the shape of `tokens` {tuple(tokens.shape)}, got "
                f"{tuple(positions.shape)}."
            )
        mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
        if attention_mask is not None:
            if attention_mask.shape != tokens.shape:
                raise ValueError(
                    f"`attention_mask` must have the shape of `tokens` {tuple(tokens.shape)}, "
                    f"got {tuple(attention_mask.shape)}."
                )
            mask = mask & (attention_mask != 0)[:, None, None, :]
        h = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            h, _ = block(h, positions, mask)
            self.record(f"block{i + 1}", h)
        h = self.final_norm(h)
        self.record("hidden", h)
        return self._logits(h)

    def init_cache(self, batch_size: int, max_length: int, *, dtype: Dtype = None) -> KVCache:
        """An empty `KVCache` for `batch_size` sequences of up to `max_length` tokens.

        Args:
          batch_size: sequences decoded together.
          max_length: prompt plus generated tokens, at most `max_seq_len`.
          dtype: storage dtype of keys and values; None uses the computation dtype (the
            parameters' dtype when the model has none).

        Returns:
          The cache, all lengths 0.
        """
        if max_length > self.config.max_seq_len:
            raise ValueError(
                f"`max_length` ({max_length}) exceeds max_seq_len={self.config.max_seq_len}."
            )
        c = self.config
        return KVCache.create(
            num_layers=c.num_layers,
            batch_size=batch_size,
            max_length=max_length,
            num_kv_heads=c.num_kv_heads,
            head_dim=c.resolved_head_dim,
            dtype=dtype or self.embed.dtype or self.embed.param_dtype,
        )

    def _cached(self, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Hidden states of `tokens` appended after each sequence's cached positions."""
        if tokens.shape[0] != cache.batch_size:
            raise ValueError(
                f"`tokens` has batch {tokens.shape[0]} but the cache holds {cache.batch_size} "
                "sequences."
            )
        positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)
        mask = cache.attention_mask(positions)
        h = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            h, cache = block(h, positions, mask, cache, i)
        return self.final_norm(h), cache

    def prefill(
        self, tokens: jax.Array, lengths: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """Runs right-padded prompts through the model and stores their keys and values.

        Row b's tokens `tokens[b, :lengths[b]]` go to cache positions
        `cache.lengths[b]` onwards (0 onwards for a fresh cache); tokens past `lengths[b]`
        are padding, whose cache entries are overwritten by the next decoded tokens.

        Args:
          tokens: `[B, T]` int right-padded prompts, T <= the cache's `max_length`.
          lengths: `[B]` int, the real length of each prompt, >= 1.
          cache: the cache to extend, e.g. from `init_cache`.

        Returns:
          `(logits, cache)`: `[B, vocab_size]` logits at each prompt's last real token
          (the distribution of the first new token), and the cache with
          `lengths` increased by `lengths`.
        """
        tokens = jnp.asarray(tokens)
        _check_tokens(tokens, "tokens", 2)
        lengths = jnp.asarray(lengths, jnp.int32)
        if lengths.shape != (tokens.shape[0],):
            raise ValueError(
                f"`lengths` must have shape [{tokens.shape[0]}] to match `tokens` "
                f"{tuple(tokens.shape)}, got {tuple(lengths.shape)}."
            )
        if tokens.shape[1] > cache.max_length:
            raise ValueError(
                f"`tokens` has length {tokens.shape[1]}, more than the cache's max_length "
                f"{cache.max_length}."
            )
        h, cache = self._cached(tokens, cache)
        last = jnp.take_along_axis(h, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
        return self._logits(last), cache.replace(lengths=cache.lengths + lengths)

    def decode_step(self, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Appends one token per sequence and returns the next-token logits.

        Args:
          tokens: `[B]` int, written at position `cache.lengths[b]` of each sequence.
          cache: the cache after `prefill` (and earlier steps).

        Returns:
          `(logits, cache)`: `[B, vocab_size]` logits and the cache with lengths + 1.
        """
        tokens = jnp.asarray(tokens)
        _check_tokens(tokens, "tokens", 1)
        h, cache = self._cached(tokens[:, None], cache)
        return self._logits(h[:, 0]), cache.replace(lengths=cache.lengths + 1)


def transformer_lm(
    *,
    num_classes: int = 259,
    rngs: nnx.Rngs,
    config: TransformerConfig | None = None,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    **sizes,
) -> Transformer:
    """A `Transformer` whose vocabulary is `num_classes` (registry-style builder).

    `sizes` override fields of `config` (default `TransformerConfig()`), e.g.
    `transformer_lm(num_classes=260, dim=64, num_layers=2, rngs=nnx.Rngs(0))`.
    """
    config = dataclasses.replace(config or TransformerConfig(), vocab_size=num_classes, **sizes)
    return Transformer(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
