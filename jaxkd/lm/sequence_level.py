"""Sequence-level distillation: a dataset of teacher completions, then plain fine-tuning.

`write_completions` takes the first `prompt_len` tokens of each window as a prompt, samples
up to `max_new_tokens` from the teacher (`jaxkd.text.generate`: batched, jit-compiled,
KV cache, temperature / top-p, stop at EOS) and writes one array_record record per
example: the prompt length, the completion length, then the tokens. `CompletionSource`
reads them back as LM examples whose loss mask covers the completion tokens only, so the
student is fine-tuned with the ordinary next-token cross-entropy
(`lm_objective(None)`). This is the recipe used to distil DeepSeek-R1 into Qwen and
Llama students (there with 800k teacher samples).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from array_record.python import array_record_module
from flax import nnx

from jaxkd.lm._records import open_records
from jaxkd.text import Generation, PackedText, completion_batch, generate
from jaxkd.text.lm_data import shuffled_batches

META_FILE = "completions.json"
FORMAT = "jaxkd.completions.v1"


def write_completions(
    directory: str | os.PathLike,
    model: nnx.Module,
    params: Any,
    packed: PackedText,
    *,
    prompt_len: int,
    max_new_tokens: int,
    pad_id: int,
    eos_id: int | None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    num_prompts: int | None = None,
    seed: int = 0,
    records_per_shard: int = 8192,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Samples teacher completions of the windows' prompts and writes them as a dataset.

    Args:
      directory: output directory (must not already hold completions).
      model: the teacher `Transformer` (structure; weights from `params`).
      params: its params (pure dict) or None for the module's own.
      packed: windows whose first `prompt_len` tokens are the prompts.
      prompt_len: P, prompt tokens (<= the windows' length).
      max_new_tokens: N, tokens sampled at most per prompt.
      pad_id: written after a completion.
      eos_id: stops a completion (kept in it); None never stops.
      vocab_size: the tokenizer's vocabulary (padded head rows are never sampled).
      temperature: sampling temperature (0 is greedy).
      top_p: nucleus mass.
      batch_size: prompts per generation call.
      num_prompts: use the first prompts only; None all windows.
      seed: sampling seed; batch i uses `fold_in(key(seed), i)`.
      records_per_shard: examples per array_record shard.
      metadata: extra JSON fields for `completions.json`.

    Returns:
      The `completions.json` contents, with `generated_tokens` and `tokens_per_second`
      (generated tokens per second of sampling, compilation excluded).

    References:
      Kim & Rush 2016, "Sequence-Level Knowledge Distillation"; DeepSeek-AI 2025,
      "DeepSeek-R1" (distillation into Qwen/Llama by fine-tuning on teacher samples).
    """
    if os.path.exists(os.path.join(directory, META_FILE)):
        raise ValueError(f"{directory} already holds completions; choose a new directory.")
    if not 1 <= prompt_len <= packed.inputs.shape[1]:
        raise ValueError(
            f"`prompt_len` must be in [1, {packed.inputs.shape[1]}] (the windows' length), "
            f"got {prompt_len}."
        )
    os.makedirs(directory, exist_ok=True)
    count = len(packed) if num_prompts is None else min(len(packed), num_prompts)
    num_shards = max(1, -(-count // records_per_shard))
    names = [f"completions.array_record-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    key = jax.random.key(seed)
    writer, generated, timed_tokens, timed_seconds = None, 0, 0, 0.0
    for batch_index, start in enumerate(range(0, count, batch_size)):
        stop = min(start + batch_size, count)
        prompts = packed.inputs[start:stop, :prompt_len]
        if stop - start < batch_size:  # one compiled shape
            prompts = np.concatenate(
                [prompts, np.repeat(prompts[-1:], batch_size - len(prompts), 0)]
            )
        lengths = np.full((batch_size,), prompt_len, np.int32)
        began = time.perf_counter()
        out = generate(
            model,
            params,
            jnp.asarray(prompts),
            jnp.asarray(lengths),
            max_new_tokens=max_new_tokens,
            pad_id=pad_id,
            eos_id=eos_id,
            rng=jax.random.fold_in(key, batch_index),
            temperature=temperature,
            top_p=top_p,
            vocab_size=vocab_size,
        )
        tokens, gen_lengths = jax.device_get((out.tokens, out.lengths))
        if batch_index:  # the first call compiles
            timed_seconds += time.perf_counter() - began
            timed_tokens += int(gen_lengths.sum())
        for i in range(stop - start):
            index = start + i
            if index % records_per_shard == 0:
                if writer is not None:
                    writer.close()
                path = os.path.join(directory, names[index // records_per_shard])
                writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
            record = np.concatenate([[prompt_len, gen_lengths[i]], prompts[i], tokens[i]])
            writer.write(record.astype("<i4").tobytes())
            generated += int(gen_lengths[i])
    if writer is not None:
        writer.close()
    meta = {
        "format": FORMAT,
        "num_examples": count,
        "prompt_len": prompt_len,
        "max_new_tokens": max_new_tokens,
        "pad_id": pad_id,
        "eos_id": eos_id,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "shards": names,
        "generated_tokens": generated,
        "tokens_per_second": timed_tokens / timed_seconds if timed_seconds else float("nan"),
        **dict(metadata or {}),
    }
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


class CompletionSource:
    """Random-access source of teacher completions as LM examples (for Grain).

    `source[i]` is {"inputs", "targets", "loss_mask" [L], "mask"} with
    L = P + N − 1: prompt then completion then PAD, loss on completion tokens only
    (`jaxkd.text.completion_batch`).

    Args:
      directory: a directory written by `write_completions`.
    """

    def __init__(self, directory: str | os.PathLike):
        self.meta, self._source = open_records(directory, META_FILE, FORMAT, "completions")
        self.prompt_len = int(self.meta["prompt_len"])
        self.max_new_tokens = int(self.meta["max_new_tokens"])
        self.pad_id = int(self.meta["pad_id"])

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.max_new_tokens - 1

    def __len__(self) -> int:
        return len(self._source)

    def example(self, index: int) -> tuple[np.ndarray, int, np.ndarray, int]:
        """`(prompt [P], prompt_length, completion [N], completion_length)` of example i."""
        data = np.frombuffer(self._source[index], "<i4")
        p, g = int(data[0]), int(data[1])
        prompt = data[2 : 2 + self.prompt_len]
        completion = data[2 + self.prompt_len :]
        return prompt, p, completion, g

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        prompt, p, completion, g = self.example(index)
        batch = completion_batch(
            prompt[None],
            np.asarray([p]),
            Generation(completion[None], np.asarray([g])),
            pad_id=self.pad_id,
            seq_len=self.seq_len,
        )
        out = {k: np.asarray(v[0]) for k, v in batch.items()}
        out["mask"] = np.float32(1.0)
        return out


def completion_train_batches(
    source: CompletionSource, *, batch_size: int, seed: int, num_epochs: int | None = None
) -> grain.MapDataset:
    """The completions as `shuffled_batches`: a new order every epoch.

    Args:
      source: the `CompletionSource`.
      batch_size, seed, num_epochs: as in `jaxkd.text.lm_data.shuffled_batches`.

    Returns:
      A `grain.MapDataset` of {"inputs", "targets", "loss_mask", "mask"} batches, the
      loss on the completions.

    References:
      Kim & Rush 2016 (sequence-level KD); Grain `MapDataset`.
    """
    return shuffled_batches(
        grain.MapDataset.source(source), batch_size=batch_size, seed=seed, num_epochs=num_epochs
    )
