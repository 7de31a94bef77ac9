"""On-policy distillation (GKD): the student writes the completions the teacher scores.

Each step draws a coin with probability λ. On heads, the completions of the batch's
prompts are sampled from the *current* student (KV-cached decoding inside the step);
on tails, the data's own completions are kept. The frozen teacher then scores whichever
sequences were chosen and the student minimises `generalized_jsd(β)` on the completion
tokens. Sampling, the teacher forward, the student forward/backward and the update are
one compiled function: the engine's step, preceded by a `lax.cond` that builds its batch.

Batches are {"prompts" [B, P], "prompt_lengths" [B], "inputs", "targets", "loss_mask"
[B, L]} with L = P + N − 1 and the loss mask on the data completion's tokens
(`prompt_batches` makes them from packed windows).

References: Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning
from Self-Generated Mistakes" (GKD), Algorithm 1; Gu et al. 2024, "MiniLLM".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxkd.engine import ApplyFn, Model, TrainState, make_train_step
from jaxkd.engine.step import TrainStep
from jaxkd.lm.distill import lm_objective, teacher_config
from jaxkd.objective import Scheduled
from jaxkd.text import completion_batch, generate

_SAMPLE_SALT = 0x6B64  # keeps the sampling key apart from the engine's per-step keys


def prompt_batch(batch: Mapping[str, np.ndarray], prompt_len: int) -> dict[str, np.ndarray]:
    """An LM batch of windows as a GKD batch: prompt = first P tokens, loss after it.

    Args:
      batch: {"inputs", "targets", "loss_mask" [B, L]} (e.g. `lm_train_batches`).
      prompt_len: P, 1 <= P < L.

    Returns:
      The batch plus "prompts" [B, P] and "prompt_lengths" [B], with the loss mask zero
      on targets inside the prompt (positions j < P − 1).
    """
    inputs = np.asarray(batch["inputs"])
    if not 1 <= prompt_len < inputs.shape[1]:
        raise ValueError(
            f"`prompt_len` must be in [1, {inputs.shape[1]}) for windows of shape "
            f"{inputs.shape}, got {prompt_len}."
        )
    loss_mask = np.array(batch["loss_mask"], np.float32)
    loss_mask[:, : prompt_len - 1] = 0.0
    return {
        **batch,
        "loss_mask": loss_mask,
        "prompts": inputs[:, :prompt_len].astype(np.int32),
        "prompt_lengths": np.full((inputs.shape[0],), prompt_len, np.int32),
    }


def make_gkd_step(
    student_module: nnx.Module,
    student: Model,
    optimizer: optax.GradientTransformation,
    *,
    teacher_apply: ApplyFn | Model,
    lam: float,
    beta: Scheduled = 0.5,
    temperature: Scheduled = 1.0,
    sample_temperature: float = 1.0,
    top_p: float = 1.0,
    pad_id: int,
    eos_id: int | None = None,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> TrainStep:
    """The GKD train step `(state, teacher, batch) -> (state, metrics)`.

    With probability `lam` the completions are the student's samples (temperature
    `sample_temperature`, nucleus `top_p`, up to N = L + 1 − P tokens, stopping at EOS),
    else the batch's own; the loss is `generalized_jsd(student, teacher; β, T)` on the
    completion tokens. Metrics add `on_policy` (1.0 when the student sampled).

    Args:
      student_module: the student `Transformer` (its structure, for KV-cached sampling).
      student: its engine `Model` (`jaxkd.lm.lm_model(student_module)`).
      optimizer: the optax optimizer.
      teacher_apply: the frozen teacher's apply function.
      lam: λ in [0, 1], the fraction of on-policy batches (0 is supervised JSD, 1 is
        fully on-policy).
      beta: β of `generalized_jsd` (0 forward KL, 1 reverse KL), constant or schedule.
      temperature: temperature of the loss.
      sample_temperature: temperature of the student's samples (> 0).
      top_p: nucleus mass of the samples.
      pad_id: id after a finished completion.
      eos_id: ends a sampled completion; None never ends early.
      vocab_size: the tokenizer's vocabulary (padded rows are never sampled).
      chunk_size: tokens per chunk of the loss.

    Returns:
      The pure train step; compile it with `jax.jit` or `jaxkd.lm.train_lm`.

    References:
      Agarwal et al. 2024 (GKD), Algorithm 1.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"`lam` must be in [0, 1], got {lam}.")
    if not sample_temperature > 0:
        raise ValueError(f"`sample_temperature` must be > 0, got {sample_temperature}.")
    hparams: dict[str, Any] = {"beta": beta, "temperature": temperature}
    if chunk_size is not None:
        hparams["chunk_size"] = chunk_size
    objective = lm_objective("generalized_jsd", hparams=hparams)
    inner = make_train_step(
        student, objective, optimizer, teacher=teacher_config("generalized_jsd", teacher_apply)
    )

    def step(state: TrainState, teacher: Any, batch: Mapping[str, jax.Array]):
        for name in ("prompts", "prompt_lengths", "inputs", "targets", "loss_mask"):
            if name not in batch:
                raise ValueError(
                    f"a GKD batch needs {name!r} (see jaxkd.lm.prompt_batch); batch keys: "
                    f"{sorted(batch)}."
                )
        prompts, lengths = batch["prompts"], batch["prompt_lengths"]
        seq_len = batch["inputs"].shape[1]
        new_tokens = seq_len + 1 - prompts.shape[1]
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        coin_key, sample_key = jax.random.split(jax.random.fold_in(key, _SAMPLE_SALT))
        on_policy = jax.random.uniform(coin_key) < lam

        def sampled(_):
            out = generate(
                student_module,
                state.params,
                prompts,
                lengths,
                max_new_tokens=new_tokens,
                pad_id=pad_id,
                eos_id=eos_id,
                rng=sample_key,
                temperature=sample_temperature,
                top_p=top_p,
                vocab_size=vocab_size,
            )
            made = completion_batch(prompts, lengths, out, pad_id=pad_id, seq_len=seq_len)
            return {k: made[k].astype(batch[k].dtype) for k in made}

        def data(_):
            return {k: batch[k] for k in ("inputs", "targets", "loss_mask")}

        if lam == 0.0:
            chosen = data(None)
        elif lam == 1.0:
            chosen = sampled(None)
        else:
            chosen = jax.lax.cond(on_policy, sampled, data, None)
        # Samples are data, not a function of the params: no gradient flows through them.
        chosen = jax.lax.stop_gradient(chosen)
        state, metrics = inner(state, teacher, {**batch, **chosen})
        metrics["on_policy"] = jnp.asarray(on_policy if 0 < lam < 1 else lam, jnp.float32)
        return state, metrics

    return step
