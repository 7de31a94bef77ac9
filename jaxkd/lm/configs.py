"""The LM distillation experiment's config: data, teacher, student, and one entry per mode.

`lm_distill_config()` is the table of the README (a 2-core CPU reproduces it in under an
hour); `lm_distill_config(tiny=True)` is the same experiment at toy sizes, run by the
tests in seconds. Every field is overridable from the command line
(`--config.student.steps=400 --config.student.warm_start_steps=200`).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jaxkd.models.transformer import TransformerConfig

# Rows of the table, in order: name -> how the student is trained.
MODES = (
    "scratch",
    "forward_kl",
    "reverse_kl",
    "gkd",
    "offline_topk",
    "sequence_level",
    "on_policy",
)


def _model(dim: int, layers: int, heads: int, kv_heads: int, hidden: int, max_len: int):
    return ml_collections.ConfigDict(
        {
            "dim": dim,
            "num_layers": layers,
            "num_heads": heads,
            "num_kv_heads": kv_heads,
            "hidden_dim": hidden,
            "max_seq_len": max_len,
            "vocab_size": 260,  # one padded row past the byte tokenizer's 259 ids
        }
    )


def transformer_config(model: ml_collections.ConfigDict) -> TransformerConfig:
    """The `TransformerConfig` of a config's `teacher.model` or `student.model`."""
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    return TransformerConfig(**{k: v for k, v in model.items() if k in fields})


def lm_distill_config(tiny: bool = False) -> ml_collections.ConfigDict:
    """The experiment of `experiments/lm_distill.py`.

    Args:
      tiny: toy sizes and a few steps (for the tests), else the README's table.

    Returns:
      A locked `ml_collections.ConfigDict`.
    """
    seq_len = 16 if tiny else 128
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.modes = list(MODES)
    # Also trained from random init for all the steps, beside their warm-started rows (only
    # when student.warm_start_steps > 0): the table's second bits/byte column.
    c.cold_modes = list(MODES)
    c.data = {
        "dataset": "text_files/python_stdlib_small",
        "data_dir": "",  # "" is TFDS's default
        "train_split": "train",
        "eval_split": "validation",
        "seq_len": seq_len,
        "max_train_documents": 0,  # 0 is all
        "max_eval_documents": 0,
        "eval_batch_size": 8 if tiny else 64,
        "report_windows": 4 if tiny else 64,  # held-out windows of each row's divergences
    }
    c.teacher = {
        "model": _model(32, 2, 4, 2, 64, 2 * seq_len)
        if tiny
        else _model(128, 4, 4, 2, 352, 2 * seq_len),
        "steps": 8 if tiny else 1500,
        "batch_size": 4 if tiny else 16,
        "lr": 3e-3 if tiny else 2e-3,
        "warmup_steps": 2 if tiny else 100,
    }
    c.student = {
        "model": _model(16, 1, 2, 1, 32, 2 * seq_len)
        if tiny
        else _model(64, 2, 4, 2, 176, 2 * seq_len),
        "steps": 6 if tiny else 600,
        "batch_size": 4 if tiny else 16,
        "lr": 3e-3,
        "warmup_steps": 1 if tiny else 50,  # of the learning rate
        # Steps of the shared cross-entropy run every mode starts from (0: random init).
        "warm_start_steps": 2 if tiny else 300,
    }
    c.steps_per_call = 2 if tiny else 25
    c.kd = {"temperature": 1.0, "ce_weight": 0.0}
    c.gkd = {"lam": 0.5, "beta": 0.5}
    c.on_policy = {"lam": 1.0, "beta": 0.5, "sample_temperature": 1.0}
    c.cache = {
        "k": 8 if tiny else 50,
        "exact_top": 4,
        "top_bits": 14,
        "value_bits": 6,
        "tail_bits": 14,
        "alpha": 0.4,
        "tail": "bucket",
        "error_windows": 4 if tiny else 64,  # held-out windows for the KL-error report
    }
    c.sequence_level = {
        "prompt_len": 4 if tiny else 32,
        "num_prompts": 16 if tiny else 4096,
        "temperature": 1.0,
        "top_p": 1.0,
        "batch_size": 8 if tiny else 64,
    }
    c.lock()
    return c


def check_lm_distill_config(config: ml_collections.ConfigDict) -> None:
    """Checks what `lm_distill_config`'s types cannot: known modes, the warm-start length.

    Args:
      config: the experiment config (possibly overridden).

    Raises:
      ValueError: naming the key, for a mode not in `MODES` or
        `student.warm_start_steps` outside [0, `student.steps`).
    """
    for key in ("modes", "cold_modes"):
        unknown = [m for m in config[key] if m not in MODES]
        if unknown:
            raise ValueError(f"`config.{key}` has unknown modes {unknown}; known: {list(MODES)}.")
    steps, warm = config.student.steps, config.student.warm_start_steps
    if isinstance(warm, bool) or not isinstance(warm, int) or not 0 <= warm < steps:
        raise ValueError(
            "`config.student.warm_start_steps` must be an int in [0, config.student.steps) "
            f"= [0, {steps}) (0 is a cold start from random init), got {warm!r}."
        )
