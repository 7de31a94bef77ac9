"""The offline teacher cache: top-k log-probs and ids per token, in array_record shards.

`write_topk_cache` runs the teacher once over packed windows and writes one record per
window: its L + 1 tokens, its loss mask (bits) and the L tokens' `TopKCodec` codes.
`TopKCache` reads them back as a random-access source of LM batches that carry
`teacher_topk_logprobs` and `teacher_topk_ids`, so a student trains with
`sparse_forward_kl` without ever building the teacher. `cache.json` records the layout,
the codec, the teacher's params hash and where the windows came from. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from array_record.python import array_record_module

from jaxkd.engine import ApplyFn, TeacherState, apply_fn_of
from jaxkd.lm._records import open_records
from jaxkd.lm.distill import TOPK_IDS, TOPK_LOGPROBS
from jaxkd.lm.topk_codec import TopKCodec
from jaxkd.text import PackedText
from jaxkd.text.lm_data import shuffled_batches

META_FILE = "cache.json"
FORMAT = "jaxkd.topk_cache.v2"  # v2: enumerative ids, refined levels


def topk_fn(
    apply: ApplyFn, k: int
) -> Callable[[TeacherState, jax.Array], tuple[jax.Array, jax.Array]]:
    """`jit` of `(teacher, tokens [B, L]) -> (logprobs [B, L, k], ids [B, L, k])`.

    The teacher's full `log_softmax` (float32) at temperature 1, cut to its k largest
    entries with `jax.lax.top_k` (descending).

    Args:
      apply: the teacher's apply function.
      k: entries per token.

    Returns:
      The compiled function.

    References:
      Arcee AI DistillKit (offline top-k logits).
    """
    apply = apply_fn_of(apply)

    def run(teacher: TeacherState, tokens: jax.Array):
        out, _ = apply(teacher.params, teacher.state, tokens, train=False)
        logprobs = jax.nn.log_softmax(out.logits.astype(jnp.float32), axis=-1)
        values, ids = jax.lax.top_k(logprobs, k)
        return values, ids.astype(jnp.int32)

    return jax.jit(run)


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


@dataclasses.dataclass(frozen=True)
class CacheLayout:
    """Byte layout of one record: tokens, loss-mask bits, then L top-k codes.

    Attributes:
      seq_len: L.
      codec: the `TopKCodec`.
    """

    seq_len: int
    codec: TopKCodec

    @property
    def token_bytes(self) -> int:
        return (self.seq_len + 1) * _token_dtype(self.codec.vocab_size).itemsize

    @property
    def mask_bytes(self) -> int:
        return -(-self.seq_len // 8)

    @property
    def record_bytes(self) -> int:
        return self.token_bytes + self.mask_bytes + self.seq_len * self.codec.bytes_per_token

    def pack(self, window: Mapping[str, np.ndarray], codes: np.ndarray) -> bytes:
        tokens = np.concatenate([window["inputs"], window["targets"][-1:]])
        mask = np.packbits(np.asarray(window["loss_mask"]) > 0)
        return b"".join(
            [
                tokens.astype(_token_dtype(self.codec.vocab_size)).tobytes(),
                mask.tobytes(),
                np.ascontiguousarray(codes, np.uint8).tobytes(),
            ]
        )

    def unpack(self, record: bytes) -> dict[str, np.ndarray]:
        """One record's window: {"inputs", "targets", "loss_mask" [L], "mask", top-k [L, k]}."""
        if len(record) != self.record_bytes:
            raise ValueError(
                f"a cache record has {len(record)} bytes, the layout expects "
                f"{self.record_bytes}; the cache is corrupt or of another layout."
            )
        batch = self.unpack_batch(np.frombuffer(record, np.uint8)[None])
        return {key: value[0] for key, value in batch.items()}

    def unpack_batch(self, records: np.ndarray) -> dict[str, np.ndarray]:
        """N records' windows at once, `[N, record_bytes]` uint8 → arrays with leading N.

        One vectorized decode of all N·L codes: per record, numpy's call overhead would
        dominate the decoding of a 128-token window.
        """
        records = np.asarray(records, np.uint8)
        if records.ndim != 2 or records.shape[1] != self.record_bytes:
            raise ValueError(
                f"`records` must be [N, {self.record_bytes}] uint8, got {records.shape}; the "
                "cache is corrupt or of another layout."
            )
        n, at = records.shape[0], self.token_bytes
        dtype = _token_dtype(self.codec.vocab_size)
        tokens = np.ascontiguousarray(records[:, :at]).view(dtype).astype(np.int32)
        mask = np.unpackbits(records[:, at : at + self.mask_bytes], axis=1, count=self.seq_len)
        codes = records[:, at + self.mask_bytes :].reshape(n * self.seq_len, -1)
        logprobs, ids = self.codec.decode(codes)
        return {
            "inputs": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "loss_mask": mask.astype(np.float32),
            "mask": np.ones(n, np.float32),
            TOPK_LOGPROBS: logprobs.reshape(n, self.seq_len, -1),
            TOPK_IDS: ids.reshape(n, self.seq_len, -1),
        }


def write_topk_cache(
    directory: str | os.PathLike,
    packed: PackedText,
    teacher: TeacherState,
    apply: ApplyFn,
    codec: TopKCodec,
    *,
    batch_size: int = 32,
    records_per_shard: int = 4096,
    max_windows: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs the teacher once over `packed` and writes its top-k per token (see module doc).

    Args:
      directory: output directory (created; must not already hold a cache).
      packed: the windows (`jaxkd.text.load_packed`).
      teacher: the frozen teacher's `TeacherState`.
      apply: its apply function.
      codec: the `TopKCodec` (its `k` and `vocab_size`).
      batch_size: windows per teacher call.
      records_per_shard: windows per array_record shard.
      max_windows: cache only the first windows.
      metadata: extra JSON-able fields for `cache.json` (dataset, split, teacher hash).

    Returns:
      The `cache.json` contents, with `bytes_per_token` (top-k code) and
      `record_bytes_per_token` (with tokens and mask).

    References:
      array_record (random-access records); DistillKit (top-k logit caches).
    """
    if os.path.exists(os.path.join(directory, META_FILE)):
        raise ValueError(f"{directory} already holds a teacher cache; choose a new directory.")
    if batch_size < 1 or records_per_shard < 1:
        raise ValueError(
            f"`batch_size` and `records_per_shard` must be positive, got {batch_size} and "
            f"{records_per_shard}."
        )
    os.makedirs(directory, exist_ok=True)
    count = len(packed) if max_windows is None else min(len(packed), max_windows)
    seq_len = packed.inputs.shape[1]
    layout = CacheLayout(seq_len, codec)
    run = topk_fn(apply, codec.k)
    num_shards = max(1, -(-count // records_per_shard))
    names = [f"topk.array_record-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    writer = None
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        tokens = packed.inputs[start:stop]
        if stop - start < batch_size:  # one compiled shape: pad the last call
            tokens = np.concatenate([tokens, np.repeat(tokens[-1:], batch_size - len(tokens), 0)])
        logprobs, ids = jax.device_get(run(teacher, jnp.asarray(tokens)))
        k = codec.k
        codes = codec.encode(logprobs.reshape(-1, k), ids.reshape(-1, k))
        codes = codes.reshape(batch_size, seq_len, -1)
        for i in range(stop - start):
            index = start + i
            if index % records_per_shard == 0:
                if writer is not None:
                    writer.close()
                path = os.path.join(directory, names[index // records_per_shard])
                writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
            writer.write(layout.pack(packed[index], codes[i]))
    if writer is not None:
        writer.close()
    meta = {
        "format": FORMAT,
        "seq_len": seq_len,
        "num_windows": count,
        "shards": names,
        "codec": dataclasses.asdict(codec),
        "bytes_per_token": codec.bytes_per_token,
        "record_bytes_per_token": layout.record_bytes / seq_len,
        **dict(metadata or {}),
    }
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


class TopKCache:
    """Random-access source of cached LM windows with the teacher's top-k (for Grain).

    `cache[i]` is {"inputs", "targets", "loss_mask" [L], "mask", "teacher_topk_logprobs",
    "teacher_topk_ids" [L, k]}: decoded values, sorted by id.

    Args:
      directory: a directory written by `write_topk_cache`.
    """

    def __init__(self, directory: str | os.PathLike):
        self.meta, self._source = open_records(directory, META_FILE, FORMAT, "teacher cache")
        self.codec = TopKCodec(**self.meta["codec"])
        self.layout = CacheLayout(self.meta["seq_len"], self.codec)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.layout.unpack(self._source[index])

    def record(self, index: int) -> np.ndarray:
        """Record `index` still coded, `[record_bytes]` uint8 (see `CacheLayout`)."""
        return np.frombuffer(self._source[index], np.uint8)

    def __repr__(self) -> str:
        return (
            f"TopKCache(windows={len(self)}, seq_len={self.layout.seq_len}, k={self.codec.k}, "
            f"bytes_per_token={self.codec.bytes_per_token})"
        )


def cached_train_batches(
    cache: TopKCache, *, batch_size: int, seed: int, num_epochs: int | None = None
) -> grain.MapDataset:
    """The cached windows as `shuffled_batches`: a new order every epoch, top-k decoded.

    Args:
      cache: the `TopKCache`.
      batch_size, seed, num_epochs: as in `jaxkd.text.lm_data.shuffled_batches`.

    Returns:
      A `grain.MapDataset` of `cache[i]`'s entries batched: LM windows with the teacher's
      top-k.

    References:
      Grain `MapDataset`.
    """
    # Records are batched still coded and decoded a batch at a time.
    records = grain.MapDataset.range(len(cache)).map(cache.record)
    batches = shuffled_batches(records, batch_size=batch_size, seed=seed, num_epochs=num_epochs)
    return batches.map(cache.layout.unpack_batch)
