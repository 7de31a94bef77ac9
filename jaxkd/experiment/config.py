"""The experiment config: one `ml_collections.ConfigDict` is the whole experiment.

Every file in `experiments/configs/` starts from `base_config()` and overrides fields; the
command line overrides them again (`--config.optimizer.lr=0.1`). Keys not defined here are
rejected (the dict is locked), so a typo is an error rather than a silently ignored value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


def term(
    name: str,
    loss: str,
    *,
    weight: float = 1.0,
    student: str = "logits",
    teacher: str | None = "logits",
    inputs: Sequence[str] = (),
    hparams: Mapping[str, Any] | None = None,
    adapter: str | None = None,
    teacher_adapter: str | None = None,
    warmup_epochs: float = 0.0,
    adapter_kwargs: Mapping[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """One objective term as config: `weight · loss(student source, teacher source, ...)`.

    Args:
      name: unique term name (metrics report `loss/<name>`).
      loss: a public function name in `jaxkd.losses`, e.g. "kd", "dkd", "hint".
      weight: constant weight.
      student: "logits" or a student feature name (see docs/models.md), e.g. "stage2".
      teacher: "logits", a teacher feature name, or None for a student-only term.
      inputs: batch keys passed positionally after the two arrays, e.g. ("label",).
      hparams: loss keyword hyperparameters, e.g. {"temperature": 4.0}.
      adapter: name of a trainable student-side adapter ("hint", "embed", "vid", ...),
        built by the experiment builder from the two feature shapes.
      teacher_adapter: the same for the teacher side (e.g. CRD's "embed").
      warmup_epochs: linear warm-up of the weight from 0 over this many epochs (DKD uses 20).
      adapter_kwargs: options of the adapters, e.g. {"feat_dim": 128} for CRD's "embed"
        heads or {"use_relu": False} for a "hint" regressor (see docs/training.md).
    """
    return ml_collections.ConfigDict(
        {
            "name": name,
            "loss": loss,
            "weight": float(weight),
            "student": student,
            "teacher": teacher,
            "inputs": list(inputs),
            "hparams": dict(hparams or {}),
            "adapter": adapter,
            "teacher_adapter": teacher_adapter,
            "warmup_epochs": float(warmup_epochs),
            "adapter_kwargs": dict(adapter_kwargs or {}),
        }
    )


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every experiment; see the inline comments for each field."""
    c = ml_collections.ConfigDict()
    c.name = "experiment"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist1d"  # TFDS name (with config), e.g. "cifar100", "mnist1d/transfer".
    c.data.train_split = "train"  # may be a "+"-joined union, e.g. "train+unlabeled".
    c.data.eval_split = "test"
    c.data.unlabeled_split = ""  # extra split used without labels (a transfer set), or "".
    c.data.unlabeled_weight = 0.0  # mixing weight of that split (0: by its size).
    c.data.batch_size = 64  # global batch size.
    c.data.eval_batch_size = 256
    c.data.teacher_view = "same"  # "same" (function matching), "independent" or "clean".
    c.data.mixup_alpha = 0.0
    c.data.augment = True
    c.data.in_memory = False  # small datasets: load once, run whole epochs with lax.scan.
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)

    c.student = ml_collections.ConfigDict()
    c.student.model = "mnist1d_mlp"  # a name from `jaxkd.models.list_models()`.
    c.student.kwargs = ml_collections.ConfigDict()

    c.teacher = ml_collections.ConfigDict()
    c.teacher.model = ""  # "" trains from labels alone (teacher runs, scratch students).
    c.teacher.kwargs = ml_collections.ConfigDict()
    c.teacher.checkpoint = ""  # the teacher run's workdir (its best or latest student).
    c.teacher.dtype = "float32"  # "bfloat16" halves teacher memory and bandwidth.
    c.teacher.mode = "online"  # "online", "offline" (logits in the batch), "ema".
    c.teacher.ema_decay = 0.999

    c.objective = ml_collections.ConfigDict()
    c.objective.task_weight = 1.0  # weight of the hard-label cross-entropy.
    # name -> `term(...)`; a dict (not a list) so `--config.objective.terms.kd.weight=1` works.
    c.objective.terms = ml_collections.ConfigDict()

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # "sgd" (momentum, nesterov) or "adamw".
    c.optimizer.lr = 0.05
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule = "piecewise"  # "piecewise", "cosine" or "constant".
    c.optimizer.decay_epochs = [150, 180, 210]  # piecewise boundaries.
    c.optimizer.decay_factor = 0.1
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.grad_clip_norm = 0.0  # 0 disables clipping.

    c.num_epochs = 240
    c.log_every_steps = 50
    c.eval_every_epochs = 1

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_epochs = 1
    c.checkpoint.max_to_keep = 2
    c.checkpoint.best_metric = "accuracy"

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices not used by fsdp.
    c.mesh.fsdp = 1
    return c


def add_terms(config: ml_collections.ConfigDict, *terms: ml_collections.ConfigDict) -> None:
    """Adds objective terms to `config.objective.terms`, keyed by their names."""
    for entry in terms:
        if entry.name in config.objective.terms:
            raise ValueError(f"objective term {entry.name!r} is defined twice.")
        config.objective.terms[entry.name] = entry


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks the config so unknown keys raise (call at the end of every `get_config`)."""
    config.lock()
    return config
