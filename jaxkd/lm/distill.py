"""Token-level LM distillation through the engine's one compiled step.

Every mode is an `Objective` over LM batches {"inputs", "targets", "loss_mask" [B, L]} and
a `TeacherConfig`:

- "scratch": next-token cross-entropy on `targets` only (no teacher);
- online ("forward_kl", "reverse_kl", "generalized_jsd", "skew_forward_kl",
  "skew_reverse_kl", "total_variation"): the frozen teacher runs inside the step on the
  same tokens, and the loss compares the two `[B, L, V]` distributions;
- "sparse_forward_kl" (offline): the batch carries the teacher's top-k log-probabilities
  (`teacher_topk_logprobs`, read as the teacher's "logits" by the engine's offline mode)
  and ids (`teacher_topk_ids`); the teacher is never loaded.

Every term reads `loss_mask`, so padding and prompt tokens never count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxkd import losses
from jaxkd.engine import ApplyFn, Model, TeacherConfig, apply_fn_of, make_train_step
from jaxkd.engine.step import TrainStep
from jaxkd.objective import Objective, Scheduled, Term, cross_entropy

ONLINE_LOSSES: dict[str, Callable[..., jax.Array]] = {
    "forward_kl": losses.forward_kl,
    "reverse_kl": losses.reverse_kl,
    "generalized_jsd": losses.generalized_jsd,
    "skew_forward_kl": losses.skew_forward_kl,
    "skew_reverse_kl": losses.skew_reverse_kl,
    "total_variation": losses.total_variation,
}
OFFLINE_LOSS = "sparse_forward_kl"
TOPK_LOGPROBS = "teacher_topk_logprobs"
TOPK_IDS = "teacher_topk_ids"
LOSS_MASK = "loss_mask"


def lm_objective(
    loss: str | None,
    *,
    kd_weight: Scheduled = 1.0,
    ce_weight: Scheduled = 0.0,
    hparams: Mapping[str, Any] | None = None,
) -> Objective:
    """`L = ce_weight · CE(student, targets) + kd_weight · loss(student, teacher)` per token.

    Both terms are means over the tokens where `loss_mask` is 1. The CE term is named "ce",
    the distillation term "kd".

    Args:
      loss: a name of `ONLINE_LOSSES`, "sparse_forward_kl" (offline top-k), or None for
        cross-entropy alone.
      kd_weight: weight (or optax schedule) of the distillation term.
      ce_weight: weight of the next-token cross-entropy on the data's targets.
      hparams: keyword hyperparameters of the loss (`temperature`, `beta`, `alpha`,
        `tail`, `chunk_size`), constants or schedules.

    Returns:
      The `Objective` (no classification task term: `task_weight=None`).

    References:
      Kim & Rush 2016 (word-level KD); Agarwal et al. 2024 (GKD); Gu et al. 2024 (MiniLLM,
      reverse KL).
    """
    hparams = dict(hparams or {})
    terms = []
    if loss is None or ce_weight:
        weight = 1.0 if loss is None else ce_weight
        terms.append(
            Term(
                "ce",
                cross_entropy,
                teacher=None,
                inputs=("targets",),
                weight=weight,
                mask_key=LOSS_MASK,
            )
        )
    if loss is None:
        if hparams:
            raise ValueError(f"`hparams` {sorted(hparams)} given without a distillation loss.")
    elif loss == OFFLINE_LOSS:
        terms.append(
            Term(
                "kd",
                losses.sparse_forward_kl,
                inputs=(TOPK_IDS,),
                weight=kd_weight,
                hparams=hparams,
                mask_key=LOSS_MASK,
            )
        )
    elif loss in ONLINE_LOSSES:
        terms.append(
            Term("kd", ONLINE_LOSSES[loss], weight=kd_weight, hparams=hparams, mask_key=LOSS_MASK)
        )
    else:
        names = [*ONLINE_LOSSES, OFFLINE_LOSS]
        raise ValueError(f"`loss` must be None or one of {names}, got {loss!r}.")
    return Objective(terms=terms, task_weight=None)


def teacher_config(loss: str | None, teacher_apply: ApplyFn | Model | None) -> TeacherConfig:
    """The `TeacherConfig` a loss needs: none, online (`teacher_apply`) or offline top-k.

    Args:
      loss: as in `lm_objective`.
      teacher_apply: the teacher's apply function for online losses; must be None for
        "scratch" and offline, where no teacher runs.

    Returns:
      The `TeacherConfig`.
    """
    if loss is None:
        return TeacherConfig(mode="none")
    if loss == OFFLINE_LOSS:
        if teacher_apply is not None:
            raise ValueError(
                "offline distillation reads the teacher from the batch; pass no `teacher_apply`."
            )
        return TeacherConfig(mode="offline", outputs_key=TOPK_LOGPROBS)
    if teacher_apply is None:
        raise ValueError(f"the online loss {loss!r} needs `teacher_apply`.")
    return TeacherConfig(mode="online", apply=teacher_apply)


def make_lm_train_step(
    student: Model | ApplyFn,
    optimizer: optax.GradientTransformation,
    *,
    loss: str | None,
    teacher_apply: ApplyFn | Model | None = None,
    kd_weight: Scheduled = 1.0,
    ce_weight: Scheduled = 0.0,
    hparams: Mapping[str, Any] | None = None,
) -> TrainStep:
    """The engine's train step for one LM distillation mode (`lm_objective` + teacher).

    Args:
      student: the student `Model` (e.g. `jaxkd.lm.lm_model(module)`).
      optimizer: the optax optimizer.
      loss: see `lm_objective`.
      teacher_apply: the teacher's apply function for online losses.
      kd_weight, ce_weight, hparams: see `lm_objective`.

    Returns:
      `train_step(state, teacher_state, batch) -> (state, metrics)`; `teacher_state` is the
      frozen teacher's `TeacherState` online, None otherwise.

    References:
      Hinton et al. 2015; Kim & Rush 2016.
    """
    objective = lm_objective(loss, kd_weight=kd_weight, ce_weight=ce_weight, hparams=hparams)
    config = teacher_config(loss, teacher_apply)
    return make_train_step(student, objective, optimizer, teacher=config)


def make_lm_eval_step(
    model: Model | ApplyFn,
) -> Callable[[Any, Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """`eval_step(params, state, batch) -> {"nll", "tokens"}` sums over `loss_mask`.

    `nll = Σ_{b,j} m_bj · (−log p(targets_bj | inputs_b,≤j))` in nats, `tokens = Σ m_bj`.
    Sum the dicts over an epoch (`jaxkd.engine.accumulate`), then `bits_per_byte`.

    Args:
      model: the LM `Model` or its apply function.

    Returns:
      The eval step (jit it).

    References:
      Shannon 1948 (cross-entropy as code length).
    """
    apply = apply_fn_of(model)

    def eval_step(params, state, batch):
        out, _ = apply(params, state, batch["inputs"], train=False)
        mask = batch[LOSS_MASK].astype(jnp.float32)
        nll = cross_entropy(out.logits, batch["targets"], mask=mask, reduction="none")
        return {"nll": jnp.sum(nll * mask), "tokens": jnp.sum(mask)}

    return eval_step


def bits_per_byte(nll_nats: float, num_bytes: int) -> float:
    """Bits per byte of text: `nll / (ln 2 · bytes)`, comparable across tokenizers.

    Args:
      nll_nats: summed next-token loss in nats over the split.
      num_bytes: UTF-8 bytes of the split's text.

    Returns:
      Bits per byte.

    References:
      Gao et al. 2020, "The Pile" (bits per UTF-8 byte).
    """
    if num_bytes <= 0:
        raise ValueError(f"`num_bytes` must be positive, got {num_bytes}.")
    return float(nll_nats) / (math.log(2.0) * num_bytes)
