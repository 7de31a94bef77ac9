"""Language-modelling data: TFDS text datasets tokenized, packed and batched with Grain.

Any TFDS dataset with a text feature goes through the same path: the local `text_files`
corpus (prepared on first use), `tiny_shakespeare`, or any other prepared as array_record.

    packed = load_packed("text_files", "train", ByteTokenizer(), seq_len=256)
    batches = lm_train_batches(packed, batch_size=32, seed=0)   # grain.MapDataset
    batch = batches[0]  # {"inputs", "targets", "loss_mask", "mask"}

Bits per byte of a split: the summed next-token loss in nats over `loss_mask`, divided by
ln 2 · `packed.num_bytes` (UTF-8 bytes of its text), comparable across tokenizers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from jaxkd.data.sharding import local_batch_size, process_shard
from jaxkd.data.sources import open_source
from jaxkd.text.packing import pack_documents
from jaxkd.text.text_builder import TextFiles
from jaxkd.text.tokenizer import Tokenizer

# Generated from local files: reading may prepare them, since that needs no network.
_LOCAL_BUILDERS = (TextFiles,)


def _builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"`name`={name!r} is not a dataset TFDS knows; expected e.g. 'text_files', "
            "'text_files/python_stdlib_small' or 'tiny_shakespeare'."
        ) from None


def text_key_of(builder: tfds.core.DatasetBuilder) -> str:
    """The text feature of a dataset: "text" if it has one, else its only Text feature."""
    features = builder.info.features
    texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
    if "text" in texts:
        return "text"
    if len(texts) != 1:
        raise ValueError(
            f"Dataset {builder.name!r} must have one Text feature or one named 'text' "
            f"(got Text features {texts}); pass `text_key`."
        )
    return texts[0]


def read_texts(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    text_key: str | None = None,
    download: bool | None = None,
    max_documents: int | None = None,
) -> list[str]:
    """The documents of one split of a TFDS text dataset, in the split's stored order.

    Args:
      name: TFDS name, e.g. "text_files", "text_files/python_stdlib_small",
        "tiny_shakespeare".
      split: TFDS split string, e.g. "train", "validation", "test[:10]".
      data_dir: TFDS data dir; None uses `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
      text_key: the text feature; None finds it (`text_key_of`).
      download: prepare the dataset if missing; None does so only for `text_files`.
      max_documents: read at most this many documents.

    Returns:
      The documents as str.

    References:
      `tfds.data_source` (TFDS 4.9, array_record, no TensorFlow).
    """
    builder = _builder(name, data_dir)
    key = text_key or text_key_of(builder)
    if download is None:
        download = isinstance(builder, _LOCAL_BUILDERS)
    source = open_source(name, split, data_dir=data_dir, download=download)
    count = len(source) if max_documents is None else min(len(source), max_documents)
    texts = []
    for i in range(count):
        value = source[i][key]
        texts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    return texts


@dataclasses.dataclass(frozen=True, eq=False)
class PackedText:
    """Packed LM windows of one split, a random-access source of examples for Grain.

    Attributes:
      inputs: int32 `[N, L]`.
      targets: int32 `[N, L]`, inputs shifted by one.
      loss_mask: float32 `[N, L]`, 0 on padding.
      num_bytes: UTF-8 bytes of the packed text (the denominator of bits per byte).
      num_documents: documents packed.
    """

    inputs: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    num_bytes: int
    num_documents: int

    @property
    def num_tokens(self) -> int:
        """Targets with loss_mask 1: the tokens a full pass predicts."""
        return int(self.loss_mask.sum())

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {
            "inputs": self.inputs[index],
            "targets": self.targets[index],
            "loss_mask": self.loss_mask[index],
            "mask": np.float32(1.0),
        }


def pack_texts(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    add_bos: bool = False,
    drop_remainder: bool = False,
) -> PackedText:
    """Tokenizes documents and packs them (`jaxkd.text.packing.pack_documents`).

    Args:
      texts: the documents.
      tokenizer: any `jaxkd.text.Tokenizer`; its EOS separates documents, its PAD pads.
      seq_len: L, the model's sequence length.
      add_bos: put the tokenizer's BOS before each document.
      drop_remainder: drop the last partial window instead of padding it.

    Returns:
      The `PackedText`.

    References:
      Radford et al. 2019 (GPT-2 document packing).
    """
    if add_bos and tokenizer.bos_id is None:
        raise ValueError(f"`add_bos=True` but {tokenizer!r} has no BOS token.")
    packed = pack_documents(
        tokenizer.encode_batch(texts),
        seq_len,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        bos_id=tokenizer.bos_id if add_bos else None,
        drop_remainder=drop_remainder,
    )
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return PackedText(**packed, num_bytes=num_bytes, num_documents=len(texts))


def load_packed(
    name: str,
    split: str,
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    data_dir: str | None = None,
    text_key: str | None = None,
    download: bool | None = None,
    max_documents: int | None = None,
    add_bos: bool = False,
    drop_remainder: bool = False,
) -> PackedText:
    """`pack_texts(read_texts(name, split, ...), tokenizer, seq_len)`; see both."""
    texts = read_texts(
        name,
        split,
        data_dir=data_dir,
        text_key=text_key,
        download=download,
        max_documents=max_documents,
    )
    return pack_texts(texts, tokenizer, seq_len, add_bos=add_bos, drop_remainder=drop_remainder)


def shuffled_batches(
    examples: grain.MapDataset,
    *,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.MapDataset:
    """Shuffled batches of any random-access examples, a new order every epoch.

    Epoch e visits the examples in the Grain shuffle of seed `seed + e`; the last
    `N mod batch_size` of each order are dropped, and shard p of P takes every P-th
    example of it, so a global batch is the P shards' rows of one slice of the order.

    Args:
      examples: the examples (e.g. `grain.MapDataset.source(packed)`).
      batch_size: global batch size, a multiple of `shard_count`.
      seed: shuffle seed.
      num_epochs: epochs to repeat; None repeats forever.
      shard_index: this process's shard.
      shard_count: number of shards.

    Returns:
      A `grain.MapDataset` of this shard's batches of `batch_size / shard_count` rows.

    References:
      Grain `MapDataset` (shuffle, slice, batch, repeat).
    """
    shard_index, shard_count = process_shard(shard_index, shard_count)
    local = local_batch_size(batch_size, shard_count)
    per_shard = len(examples) // shard_count
    if per_shard < local:
        raise ValueError(
            f"`batch_size`={batch_size} leaves no full batch: {len(examples)} examples over "
            f"{shard_count} process(es)."
        )
    # Grain reshuffles per epoch through the slices: index e·N + i is position i of epoch e.
    order = examples.shuffle(seed=seed)[: per_shard * shard_count][shard_index::shard_count]
    return order.batch(local, drop_remainder=True).repeat(num_epochs)


def lm_train_batches(
    packed: PackedText,
    *,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.MapDataset:
    """Shuffled training batches of this process, a new order every epoch (`shuffled_batches`).

    Args:
      packed: the windows.
      batch_size: global batch size, a multiple of `shard_count`.
      seed: shuffle seed.
      num_epochs: epochs to repeat; None repeats forever.
      shard_index: this process's shard; None uses `jax.process_index()`.
      shard_count: number of shards; None uses `jax.process_count()`.

    Returns:
      A `grain.MapDataset` of {"inputs", "targets", "loss_mask" [B, L], "mask" [B]};
      `iter(ds.to_iter_dataset())` is the checkpointable iterator.

    References:
      Grain `MapDataset` (shuffle, slice, batch, repeat).
    """
    shard_index, shard_count = process_shard(shard_index, shard_count)
    return shuffled_batches(
        grain.MapDataset.source(packed),
        batch_size=batch_size,
        seed=seed,
        num_epochs=num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
    )


class _Padding(grain.transforms.Map):
    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        return dict(element, loss_mask=np.zeros_like(element["loss_mask"]), mask=np.float32(0.0))


def lm_eval_batches(
    packed: PackedText,
    *,
    batch_size: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.MapDataset:
    """One ordered pass over every window, the last batch padded (loss_mask 0, mask 0).

    Process p reads windows p, p + P, ...; all processes run the same number of batches.

    Args:
      packed: the windows.
      batch_size: global batch size, a multiple of `shard_count`.
      shard_index: this process's shard; None uses `jax.process_index()`.
      shard_count: number of shards; None uses `jax.process_count()`.

    Returns:
      A `grain.MapDataset` of {"inputs", "targets", "loss_mask" [B, L], "mask" [B]}.

    References:
      Grain `MapDataset` (slice, concatenate, batch).
    """
    shard_index, shard_count = process_shard(shard_index, shard_count)
    local_batch = local_batch_size(batch_size, shard_count)
    windows = grain.MapDataset.source(packed)
    steps = math.ceil(math.ceil(len(packed) / shard_count) / local_batch)
    local = windows[shard_index::shard_count]
    missing = steps * local_batch - len(local)
    if missing:
        padding = windows[:1].map(_Padding()).repeat(missing)
        local = grain.MapDataset.concatenate([local, padding])
    return local.batch(local_batch, drop_remainder=True)
