"""The supervised warm start every student of the LM experiment continues from.

GKD (Agarwal et al. 2024) and MiniLLM (Gu et al. 2024) distil into a student that was
first fine-tuned on the data, not into random weights. The experiment does the same for
every mode, fairly: the student is trained with next-token cross-entropy for
`config.student.warm_start_steps` (W) of its `config.student.steps` (S), that train state
(params, optimizer state, step) is saved once, and each mode runs the remaining S − W
steps from it with its own objective, on the same learning-rate schedule. The "scratch"
row is the warm start continued with cross-entropy, i.e. exactly the cold scratch run.

The state is an Orbax checkpoint under `workdir/warm_start/<key>/`, where the key hashes
everything it depends on (seed, training data, student config), so a changed config
trains a new one instead of reusing a stale one; `warm_start.json` records how it was
trained.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import ml_collections

from jaxkd.checkpoint import Checkpointer, params_hash, restore_student
from jaxkd.engine import TrainState

WARM_START_DIR = "warm_start"
INFO_FILE = "warm_start.json"


# The data fields that decide the training windows (not the held-out split or reports).
_TRAIN_DATA = ("dataset", "data_dir", "train_split", "seq_len", "max_train_documents")


def _key(config: ml_collections.ConfigDict) -> dict[str, Any]:
    # The schedule spans all S steps, so `steps` (not only W) shapes the warm-up state.
    return {
        "seed": config.seed,
        "data": {k: config.data[k] for k in _TRAIN_DATA},
        "student": config.student.to_dict(),
    }


def warm_start_dir(workdir: str, config: ml_collections.ConfigDict) -> str:
    """Where the warm start of `config` lives in `workdir`.

    Args:
      workdir: the experiment's directory.
      config: the experiment config.

    Returns:
      `workdir/warm_start/<first 12 hex digits of SHA-256 of (seed, training data,
      student)>`.
    """
    text = json.dumps(_key(config), sort_keys=True)
    return os.path.join(workdir, WARM_START_DIR, hashlib.sha256(text.encode()).hexdigest()[:12])


def save_warm_start(
    directory: str, state: TrainState, config: ml_collections.ConfigDict, info: dict[str, Any]
) -> dict[str, Any]:
    """Saves the warm-up's final train state and `warm_start.json`.

    Args:
      directory: `warm_start_dir(workdir, config)`.
      state: the student's `TrainState` after W cross-entropy steps.
      config: the experiment config (its key is recorded).
      info: JSON facts of the warm-up (bits per byte, tokens/s, seconds).

    Returns:
      The recorded info, with `steps`, `params_sha256` and the config key added.

    References:
      Orbax checkpointing (via `jaxkd.checkpoint.Checkpointer`).
    """
    ckpt = Checkpointer(directory, config=_key(config), max_to_keep=1, async_save=False)
    ckpt.save(int(state.step), state, force=True)
    ckpt.close()
    info = {
        **info,
        "steps": int(state.step),
        "params_sha256": params_hash(state.params),
        "config": _key(config),
    }
    with open(os.path.join(directory, INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    return info


def load_warm_start(directory: str, target: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
    """The saved warm start restored onto `target`'s structure, or None if there is none.

    Args:
      directory: `warm_start_dir(workdir, config)`.
      target: a freshly initialised `TrainState` of the same student and optimizer.

    Returns:
      `(state, info)`: fresh arrays (safe to donate) and the `warm_start.json` contents.
    """
    path = os.path.join(directory, INFO_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        info = json.load(f)
    return restore_student(directory, target=target), info
