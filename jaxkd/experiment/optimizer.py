"""The optimizer of an experiment: optax SGD or AdamW with an epoch-based learning-rate schedule.

Recipes state schedules in epochs (RepDistiller: ×0.1 at epochs 150, 180 and 210); the train
step counts updates, so every boundary is converted to steps here, once.
"""

from __future__ import annotations

import ml_collections
import optax

SCHEDULES = ("piecewise", "cosine", "constant")
OPTIMIZERS = ("sgd", "adamw")


def learning_rate_schedule(
    config: ml_collections.ConfigDict, *, steps_per_epoch: int, num_epochs: float
) -> optax.Schedule:
    """The learning rate as a function of the step, from `config.optimizer`.

    - "piecewise": `lr · decay_factor^k` after the k-th of `decay_epochs` (RepDistiller
      lowers the rate at the start of epoch e + 1 for each boundary e, i.e. after e epochs);
    - "cosine": `lr · ½ (1 + cos(π t / T))` over the whole run, T = num_epochs · steps;
    - "constant": `lr`.

    With `warmup_epochs > 0` the rate first rises linearly from 0 to `lr` over that many
    epochs (for "cosine" the decay then covers the remaining steps).

    Args:
      config: the experiment config (reads `config.optimizer`).
      steps_per_epoch: optimizer steps in one epoch.
      num_epochs: length of the run in epochs.

    Returns:
      An optax schedule `step -> learning rate`.

    References:
      Loshchilov & Hutter, "SGDR", ICLR 2017 (cosine); Goyal et al., "Accurate, Large
      Minibatch SGD", 2017 (linear warm-up); Tian et al., CRD, ICLR 2020 (the step recipe).
    """
    opt = config.optimizer
    if opt.schedule not in SCHEDULES:
        raise ValueError(
            f"config.optimizer.schedule must be one of {SCHEDULES}, got {opt.schedule!r}."
        )
    if steps_per_epoch < 1:
        raise ValueError(f"`steps_per_epoch` must be >= 1, got {steps_per_epoch}.")
    lr = float(opt.lr)
    total = max(round(num_epochs * steps_per_epoch), 1)
    warmup = round(float(opt.warmup_epochs) * steps_per_epoch)
    if opt.schedule == "cosine":
        if warmup:
            return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1))
        return optax.cosine_decay_schedule(lr, total)
    if opt.schedule == "piecewise":
        boundaries = {
            round(float(e) * steps_per_epoch): float(opt.decay_factor) for e in opt.decay_epochs
        }
        main = optax.piecewise_constant_schedule(lr, boundaries)
    else:
        main = optax.constant_schedule(lr)
    if not warmup:
        return main
    # `join_schedules` restarts the second schedule's clock at the boundary; the epoch
    # boundaries above are absolute, so feed it the absolute step back.
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), lambda step: main(step + warmup)], [warmup]
    )


def make_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """The optax optimizer of `config.optimizer` over the student's params and adapters.

    - "sgd": `sgd(lr, momentum, nesterov)` after `add_decayed_weights(weight_decay)`:
      `g ← g + λ·w`, PyTorch's `SGD(weight_decay=λ)` (L2 added to the gradient, before
      momentum), as RepDistiller and mdistiller train; applied to every parameter.
    - "adamw": `adamw(lr, b1=momentum, weight_decay)`: decoupled weight decay.

    `grad_clip_norm > 0` first clips the global gradient norm.

    Args:
      config: the experiment config (reads `config.optimizer`).
      schedule: the learning rate per step (`learning_rate_schedule`).

    Returns:
      The `optax.GradientTransformation`.

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019 (AdamW);
      Pascanu et al., "On the difficulty of training RNNs", ICML 2013 (clipping).
    """
    opt = config.optimizer
    if opt.name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name must be one of {OPTIMIZERS}, got {opt.name!r}.")
    parts = []
    if float(opt.grad_clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
    if opt.name == "sgd":
        if float(opt.weight_decay) > 0:
            parts.append(optax.add_decayed_weights(float(opt.weight_decay)))
        momentum = float(opt.momentum) or None
        parts.append(optax.sgd(schedule, momentum=momentum, nesterov=bool(opt.nesterov)))
    else:
        parts.append(
            optax.adamw(schedule, b1=float(opt.momentum), weight_decay=float(opt.weight_decay))
        )
    return optax.chain(*parts) if len(parts) > 1 else parts[0]
