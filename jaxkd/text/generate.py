"""Batched sampling from a causal LM: greedy, temperature and nucleus (top-p), with a KV cache.

`generate` is one jit-compiled function: a prefill of the right-padded prompts, then a
`lax.while_loop` of one-token decode steps on the model's `KVCache`, stopping when every
sequence has emitted EOS or `max_new_tokens` are drawn. Sequences of a batch decode at
their own positions (prompt lengths differ); a finished sequence emits PAD. The uncached
path (`use_cache=False`) recomputes the full forward pass over a fixed-size buffer at each
step; it gives the same tokens and exists to test the cache and to time it.

Prompts are right-padded: row b holds its prompt in `prompts[b, :prompt_lengths[b]]`,
anything after it is ignored.

References: Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"
(nucleus sampling); Kim & Rush 2016, "Sequence-Level Knowledge Distillation";
Agarwal et al. 2024, "On-Policy Distillation of Language Models" (GKD).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

# apply(params, tokens [B, T]) -> logits [B, T, V]
ApplyFn = Callable[[Any, jax.Array], jax.Array]


class Generation(NamedTuple):
    """Sampled completions.

    Attributes:
      tokens: `[B, max_new_tokens]` int32 generated ids; PAD after each sequence's end.
      lengths: `[B]` int32 generated tokens of each sequence, including the EOS that
        ended it.
    """

    tokens: jax.Array
    lengths: jax.Array


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """Keeps the smallest set of most likely tokens whose probability reaches `top_p`.

    With probabilities sorted descending p_(1) >= p_(2) >= ..., token (k) is kept when
    sum_{i<k} p_(i) < top_p (so the most likely token always is); the rest get -inf.

    Args:
      logits: `[..., V]` logits (after any temperature).
      top_p: nucleus mass in (0, 1]; 1 keeps every token.

    Returns:
      The logits with tokens outside the nucleus set to -inf.

    References:
      Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration".
    """
    if not isinstance(top_p, jax.core.Tracer) and not 0.0 < top_p <= 1.0:
        raise ValueError(f"`top_p` must be in (0, 1], got {top_p}.")
    return _nucleus(logits, top_p)


def _nucleus(logits: jax.Array, top_p: jax.Array | float) -> jax.Array:
    sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    threshold = jnp.min(
        jnp.where(mass_before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True
    )
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_token(
    logits: jax.Array, rng: jax.Array | None, *, temperature: float, top_p: float = 1.0
) -> jax.Array:
    """Draws one token per row: argmax at temperature 0, else from softmax(logits / T).

    Args:
      logits: `[B, V]` logits.
      rng: PRNG key (unused at temperature 0).
      temperature: T >= 0; 0 is greedy.
      top_p: nucleus mass applied after the temperature (see `top_p_filter`).

    Returns:
      `[B]` int32 token ids.

    References:
      Ackley et al. 1985 (temperature); Holtzman et al. 2020 (top-p).
    """
    if temperature < 0:
        raise ValueError(f"`temperature` must be >= 0, got {temperature}.")
    if temperature > 0 and rng is None:
        raise ValueError(f"`rng` is required for sampling at temperature {temperature}.")
    return _sample(logits, rng, temperature, top_p, greedy=temperature == 0, nucleus=top_p < 1)


def _sample(logits, rng, temperature, top_p, *, greedy: bool, nucleus: bool) -> jax.Array:
    """`sample_token` with traced temperature and top-p: one compilation for all values."""
    logits = logits.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if nucleus:
        logits = _nucleus(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _model_functions(model: Any, params: Any):
    """(static spec, params, rest) of an NNX LM module or an apply function."""
    if isinstance(model, nnx.Module):
        for method in ("prefill", "decode_step", "init_cache"):
            if not callable(getattr(model, method, None)):
                raise TypeError(
                    f"`model` {type(model).__name__} has no `{method}` method; pass a "
                    "jaxkd.models.Transformer or an apply function with use_cache=False."
                )
        graphdef, own_params, rest = nnx.split(model, nnx.Param, ...)
        return graphdef, own_params if params is None else params, rest
    if callable(model):
        return model, params, None
    raise TypeError(f"`model` must be an nnx.Module or an apply function, got {model!r}.")


def _check_prompts(prompts: jax.Array, prompt_lengths: jax.Array) -> None:
    if prompts.ndim != 2 or not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError(
            f"`prompts` must be int token ids [batch, length], got dtype {prompts.dtype} "
            f"and shape {tuple(prompts.shape)}."
        )
    if prompt_lengths.shape != (prompts.shape[0],):
        raise ValueError(
            f"`prompt_lengths` must have shape [{prompts.shape[0]}] to match `prompts` "
            f"{tuple(prompts.shape)}, got {tuple(prompt_lengths.shape)}."
        )
    if not isinstance(prompt_lengths, jax.core.Tracer):
        low, high = int(prompt_lengths.min()), int(prompt_lengths.max())
        if low < 1 or high > prompts.shape[1]:
            raise ValueError(
                f"`prompt_lengths` must be in [1, {prompts.shape[1]}] (the prompts' padded "
                f"length), got values in [{low}, {high}]."
            )


def generate(
    model: nnx.Module | ApplyFn,
    params: Any,
    prompts: jax.Array,
    prompt_lengths: jax.Array,
    *,
    max_new_tokens: int,
    pad_id: int,
    eos_id: int | None = None,
    rng: jax.Array | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    use_cache: bool = True,
    vocab_size: int | None = None,
) -> Generation:
    """Samples up to `max_new_tokens` tokens after each prompt, batched and jit-compiled.

    Step t draws x_t ~ softmax(top_p(z_t / T)) (argmax at T = 0) where z_t are the
    model's logits after prompt and x_<t; a sequence stops after emitting `eos_id`.

    Args:
      model: a `jaxkd.models.Transformer` (its structure; weights come from `params`),
        or `apply(params, tokens [B, T]) -> logits [B, T, V]` (uncached path only).
      params: the model's `nnx.Param` state or its pure dict (`nnx.to_pure_dict`, as in
        `jaxkd.engine.from_nnx`), or None to use the module's own weights.
      prompts: `[B, P]` int right-padded prompts.
      prompt_lengths: `[B]` int, 1 <= length <= P.
      max_new_tokens: N, tokens to generate at most; P + N must fit the model.
      pad_id: emitted after a sequence has finished.
      eos_id: stops a sequence once sampled (it is kept in the output); None never stops.
      rng: PRNG key; required when `temperature > 0`. Step t uses `fold_in(rng, t)`.
      temperature: T >= 0; 0 is greedy decoding.
      top_p: nucleus mass in (0, 1].
      use_cache: decode with the KV cache (prefill + one-token steps) or recompute the
        full forward pass at each step.
      vocab_size: the tokenizer's vocabulary size; logits past it (padding rows of the
        head) are never sampled. None samples from all logits.

    Returns:
      A `Generation(tokens [B, N], lengths [B])`.

    References:
      Holtzman et al. 2020 (nucleus sampling); Kim & Rush 2016 (sequence-level KD).
    """
    prompts = jnp.asarray(prompts)
    prompt_lengths = jnp.asarray(prompt_lengths)
    _check_prompts(prompts, prompt_lengths)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be a positive int, got {max_new_tokens!r}.")
    if temperature < 0:
        raise ValueError(f"`temperature` must be >= 0, got {temperature}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"`top_p` must be in (0, 1], got {top_p}.")
    if temperature > 0 and rng is None:
        raise ValueError(f"`rng` is required for sampling at temperature {temperature}.")
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < 1):
        raise ValueError(f"`vocab_size` must be a positive int or None, got {vocab_size!r}.")
    spec, params, rest = _model_functions(model, params)
    if use_cache and not isinstance(spec, nnx.GraphDef):
        raise ValueError(
            "`use_cache=True` needs an NNX LM module with prefill/decode_step (e.g. "
            "jaxkd.models.Transformer); an apply function only supports use_cache=False."
        )
    max_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    if max_len is not None and prompts.shape[1] + max_new_tokens > max_len:
        raise ValueError(
            f"Prompt length {prompts.shape[1]} + max_new_tokens {max_new_tokens} exceeds the "
            f"model's max_seq_len {max_len}."
        )
    return _generate(
        spec,
        params,
        rest,
        prompts.astype(jnp.int32),
        prompt_lengths.astype(jnp.int32),
        rng,
        jnp.float32(max(temperature, 1e-6)),
        jnp.float32(top_p),
        jnp.int32(pad_id),
        jnp.int32(-1 if eos_id is None else eos_id),
        jnp.int32(-1 if vocab_size is None else vocab_size),
        max_new_tokens=max_new_tokens,
        greedy=temperature == 0,
        nucleus=top_p < 1,
        use_cache=use_cache,
    )


def _cached_decoder(spec, params, rest, prompts, prompt_lengths, total):
    """First-token logits, decoder state and step function of the KV-cache path."""
    module = nnx.merge(spec, params, rest)
    cache = module.init_cache(prompts.shape[0], total)
    first_logits, cache = module.prefill(prompts, prompt_lengths, cache)
    return first_logits, cache, module.decode_step


def _uncached_decoder(spec, params, rest, prompts, prompt_lengths, total, pad_id):
    """The same for the recompute-everything path, over a fixed [B, P + N] buffer."""
    if isinstance(spec, nnx.GraphDef):
        module = nnx.merge(spec, params, rest)
        forward = module
    else:
        forward = functools.partial(spec, params)
    batch, prompt_len = prompts.shape
    rows = jnp.arange(batch)

    def logits_at(buffer, index):
        # Causal attention: tokens past `index` (padding, later writes) do not matter.
        logits = forward(buffer)
        return jnp.take_along_axis(logits, index[:, None, None], axis=1)[:, 0]

    def step(token, state):
        buffer, length = state
        buffer = buffer.at[rows, length].set(token, mode="drop")
        return logits_at(buffer, length), (buffer, length + 1)

    buffer = jnp.full((batch, total), pad_id, jnp.int32).at[:, :prompt_len].set(prompts)
    return logits_at(buffer, prompt_lengths - 1), (buffer, prompt_lengths), step


@functools.partial(
    jax.jit, static_argnames=("spec", "max_new_tokens", "greedy", "nucleus", "use_cache")
)
def _generate(
    spec,
    params,
    rest,
    prompts,
    prompt_lengths,
    rng,
    temperature,
    top_p,
    pad_id,
    eos_id,
    vocab_size,
    *,
    max_new_tokens,
    greedy,
    nucleus,
    use_cache,
) -> Generation:
    # Only what changes shapes or the program is static: new prompts, keys, temperatures,
    # top-p values or special ids reuse the compiled loop.
    batch, prompt_len = prompts.shape
    total = prompt_len + max_new_tokens
    if use_cache:
        first_logits, state, step_fn = _cached_decoder(
            spec, params, rest, prompts, prompt_lengths, total
        )
    else:
        first_logits, state, step_fn = _uncached_decoder(
            spec, params, rest, prompts, prompt_lengths, total, pad_id
        )

    def pick(logits, step):
        # vocab_size < 0 means "no padding rows"; ids past it are never drawn.
        ids = jnp.arange(logits.shape[-1])
        logits = jnp.where((vocab_size < 0) | (ids < vocab_size), logits, -jnp.inf)
        key = None if rng is None else jax.random.fold_in(rng, step)
        return _sample(logits, key, temperature, top_p, greedy=greedy, nucleus=nucleus)

    def cond(carry):
        step, _, _, _, _, done = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, logits, state, tokens, lengths, done = carry
        token = jnp.where(done, pad_id, pick(logits, step))
        tokens = tokens.at[:, step].set(token)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (token == eos_id)
        # Finished rows keep decoding PAD: the batch moves in lockstep, their outputs are
        # discarded.
        logits, state = step_fn(token, state)
        return step + 1, logits, state, tokens, lengths, done

    carry = (
        jnp.int32(0),
        first_logits,
        state,
        jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch,), bool),
    )
    _, _, _, tokens, lengths, _ = jax.lax.while_loop(cond, body, carry)
    return Generation(tokens=tokens, lengths=lengths)


def completion_batch(
    prompts: jax.Array,
    prompt_lengths: jax.Array,
    generation: Generation,
    *,
    pad_id: int,
    seq_len: int | None = None,
) -> dict[str, jax.Array]:
    """An LM batch of prompt + completion with the loss on the completion tokens only.

    Row b is s = prompt[:P_b] ++ completion[:G_b] ++ PAD..., cut to `seq_len + 1` tokens;
    inputs = s[:-1], targets = s[1:], loss_mask[j] = 1 iff P_b <= j + 1 < P_b + G_b, i.e.
    the target is a generated token (the EOS included). Works under `jax.jit`.

    Args:
      prompts: `[B, P]` right-padded prompts.
      prompt_lengths: `[B]` prompt lengths.
      generation: the `Generation` sampled after them.
      pad_id: id after the completion.
      seq_len: L of the batch; None is P + N - 1 (every sequence fits).

    Returns:
      {"inputs": int32 [B, L], "targets": int32 [B, L], "loss_mask": float32 [B, L]}.

    References:
      Kim & Rush 2016, "Sequence-Level Knowledge Distillation"; Agarwal et al. 2024 (GKD).
    """
    prompts = jnp.asarray(prompts)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)[:, None]
    tokens, gen_lengths = generation.tokens, jnp.asarray(generation.lengths)[:, None]
    if tokens.shape[0] != prompts.shape[0]:
        raise ValueError(
            f"`generation.tokens` {tuple(tokens.shape)} and `prompts` "
            f"{tuple(prompts.shape)} must have the same batch size."
        )
    p, n = prompts.shape[1], tokens.shape[1]
    length = p + n - 1 if seq_len is None else seq_len
    if length < 1:
        raise ValueError(f"`seq_len` must be positive, got {seq_len}.")
    j = jnp.arange(length + 1)[None, :]
    from_prompt = jnp.take_along_axis(prompts, jnp.clip(j, 0, p - 1), axis=1)
    from_gen = jnp.take_along_axis(tokens, jnp.clip(j - prompt_lengths, 0, n - 1), axis=1)
    end = prompt_lengths + gen_lengths
    seq = jnp.where(j < prompt_lengths, from_prompt, jnp.where(j < end, from_gen, pad_id))
    target_index = j[:, 1:]
    loss_mask = (target_index >= prompt_lengths) & (target_index < end)
    return {
        "inputs": seq[:, :-1].astype(jnp.int32),
        "targets": seq[:, 1:].astype(jnp.int32),
        "loss_mask": loss_mask.astype(jnp.float32),
    }
