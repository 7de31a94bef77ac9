"""Language models as engine `Model`s, and saving/loading one with its sizes and tokenizer.

A saved LM is a directory holding `teacher/` (the params, an Orbax checkpoint written by
`jaxkd.checkpoint`) and `lm_model.json` (the `TransformerConfig`, the tokenizer name and the
real vocabulary size), so `jaxkd cache-teacher` and `jaxkd generate` can rebuild the teacher
from the directory alone. Nothing in it is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkd.checkpoint import restore_teacher
from jaxkd.checkpoint.teacher import write_teacher
from jaxkd.engine import Model, from_nnx
from jaxkd.models.transformer import Transformer, TransformerConfig
from jaxkd.objective import Outputs
from jaxkd.text import mask_padded_vocab

MODEL_FILE = "lm_model.json"
PARAMS_DIR = "teacher"


def lm_model(module: Transformer, *, vocab_size: int | None = None) -> Model:
    """The engine `Model` of a `Transformer`, with padded vocabulary rows masked.

    `apply(params, state, tokens [B, L], *, train) -> (Outputs(logits [B, L, V]), state)`;
    logits of ids >= `vocab_size` (rows the tokenizer never produces) are -inf, so no
    softmax, top-k or sample ever puts mass on them.

    Args:
      module: an initialized `jaxkd.models.Transformer`.
      vocab_size: the tokenizer's vocabulary size; None keeps every row.

    Returns:
      A `jaxkd.engine.Model`.

    References:
      Qwen Team 2024, "Qwen2 Technical Report" (padded vocabularies).
    """
    if not isinstance(module, Transformer):
        raise TypeError(f"`module` must be a jaxkd Transformer, got {type(module).__name__}.")
    model = from_nnx(module)
    width = module.config.vocab_size
    if vocab_size is None or vocab_size == width:
        return model
    if vocab_size > width:
        raise ValueError(
            f"`vocab_size` {vocab_size} exceeds the model's vocab_size {width}; teacher and "
            "student need the tokenizer's vocabulary."
        )

    def apply(params, state, inputs, *, train: bool, rng: jax.Array | None = None):
        out, new_state = model.apply(params, state, inputs, train=train, rng=rng)
        return Outputs(mask_padded_vocab(out.logits, vocab_size), out.features), new_state

    return Model(apply=apply, params=model.params, state=model.state)


def build_lm(config: TransformerConfig, *, seed: int = 0) -> Transformer:
    """A freshly initialized `Transformer` of `config` (params from `nnx.Rngs(seed)`)."""
    return Transformer(config, rngs=nnx.Rngs(seed))


def count_params(params: Any) -> int:
    """Number of scalars in a params tree."""
    return int(sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(params)))


def save_lm(
    directory: str | os.PathLike,
    config: TransformerConfig,
    params: Any,
    *,
    tokenizer: str = "byte",
    vocab_size: int | None = None,
) -> str:
    """Writes an LM's params and sizes to `directory` (see the module docstring).

    Args:
      directory: where to write; created if needed.
      config: the model's sizes.
      params: its params (the pure dict of `jaxkd.engine.from_nnx`).
      tokenizer: "byte" or the path of the tokenizer.json it was trained with.
      vocab_size: the tokenizer's vocabulary size (None: the model's).

    Returns:
      The params hash recorded with the checkpoint.

    References:
      Orbax checkpointing (via `jaxkd.checkpoint`).
    """
    os.makedirs(directory, exist_ok=True)
    digest = write_teacher(os.path.join(directory, PARAMS_DIR), params)
    meta = {
        "config": dataclasses.asdict(config),
        "tokenizer": tokenizer,
        "vocab_size": config.vocab_size if vocab_size is None else int(vocab_size),
        "params_sha256": digest,
    }
    with open(os.path.join(directory, MODEL_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return digest


def load_lm(directory: str | os.PathLike) -> tuple[Transformer, Any, dict[str, Any]]:
    """Reads an LM written by `save_lm`.

    Args:
      directory: the directory given to `save_lm`.

    Returns:
      `(module, params, meta)`: the `Transformer` holding the restored weights, its params
      as a pure dict, and the JSON metadata (`config`, `tokenizer`, `vocab_size`).

    Raises:
      FileNotFoundError: `directory` has no `lm_model.json`.
    """
    path = os.path.join(directory, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory} is not a saved LM: it has no {MODEL_FILE} (write one with "
            "jaxkd.lm.save_lm or experiments/lm_distill.py)."
        )
    with open(path) as f:
        meta = json.load(f)
    config = TransformerConfig(**meta["config"])
    module = build_lm(config)
    target = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    params = restore_teacher(os.path.join(directory, PARAMS_DIR), target=target)
    graphdef, _, rest = nnx.split(module, nnx.Param, ...)
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    module = nnx.merge(graphdef, state, rest)
    return module, params, meta
