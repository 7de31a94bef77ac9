"""Packing token streams into fixed-length language-modelling windows.

Documents are joined into one stream, each followed by EOS (and preceded by BOS when the
tokenizer has one and it is asked for), then cut into windows of L + 1 tokens that start
every L tokens: window i is stream[i·L : i·L + L + 1], "inputs" its first L tokens and
"targets" its last L. Consecutive windows share one token, so every token of the stream
after the first is a target exactly once, which makes held-out losses exact averages over
the text. The last window is padded with PAD and its "loss_mask" is 0 on the padding.
Attention is not reset at document boundaries (GPT-2-style packing): EOS marks them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike


def concat_documents(
    documents: Iterable[ArrayLike], *, eos_id: int, bos_id: int | None = None
) -> np.ndarray:
    """One int32 stream: [BOS] doc_1 EOS [BOS] doc_2 EOS ... (BOS only if `bos_id` given).

    Args:
      documents: token-id sequences, one per document.
      eos_id: separator appended after each document.
      bos_id: optional id put before each document.

    Returns:
      The `[n]` int32 stream.

    References:
      Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2).
    """
    eos = np.asarray([eos_id], np.int32)
    bos = np.asarray([] if bos_id is None else [bos_id], np.int32)
    pieces = []
    for doc in documents:
        doc = np.asarray(doc, np.int32).reshape(-1)
        pieces.extend((bos, doc, eos))
    return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)


def pack_stream(
    stream: ArrayLike, seq_len: int, *, pad_id: int, drop_remainder: bool = False
) -> dict[str, np.ndarray]:
    """Cuts a token stream into overlapping-by-one windows of `seq_len + 1` tokens.

    With n tokens there are N = ceil((n - 1) / L) windows (floor with `drop_remainder`);
    inputs[i, j] = s[i·L + j], targets[i, j] = s[i·L + j + 1], and
    loss_mask[i, j] = 1 if i·L + j + 1 < n else 0 (PAD fills positions past the stream).

    Args:
      stream: `[n]` token ids, n >= 2.
      seq_len: L, the model's sequence length.
      pad_id: id written past the end of the stream.
      drop_remainder: drop a last partial window instead of padding it.

    Returns:
      {"inputs": int32 [N, L], "targets": int32 [N, L], "loss_mask": float32 [N, L]}.

    References:
      Raffel et al. 2020, "Exploring the Limits of Transfer Learning" (T5 packing).
    """
    stream = np.asarray(stream, np.int32).reshape(-1)
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"`seq_len` must be a positive int, got {seq_len!r}.")
    n = stream.shape[0]
    num_windows = (n - 1) // seq_len if drop_remainder else -(-(n - 1) // seq_len)
    if n < 2 or num_windows < 1:
        raise ValueError(
            f"A stream of {n} tokens makes no window of seq_len={seq_len} "
            f"(drop_remainder={drop_remainder}); need more text."
        )
    padded = np.full((num_windows * seq_len + 1,), pad_id, np.int32)
    padded[: min(n, padded.shape[0])] = stream[: padded.shape[0]]
    index = np.arange(num_windows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    windows = padded[index]
    return {
        "inputs": windows[:, :-1],
        "targets": windows[:, 1:],
        "loss_mask": (index[:, 1:] < n).astype(np.float32),
    }


def pack_documents(
    documents: Iterable[ArrayLike],
    seq_len: int,
    *,
    eos_id: int,
    pad_id: int,
    bos_id: int | None = None,
    drop_remainder: bool = False,
) -> dict[str, np.ndarray]:
    """`pack_stream(concat_documents(documents))`: LM windows of tokenized documents.

    Args:
      documents: token-id sequences, one per document.
      seq_len: L, the model's sequence length.
      eos_id: separator after each document.
      pad_id: id of the padding in the last window.
      bos_id: optional id before each document.
      drop_remainder: drop a last partial window instead of padding it.

    Returns:
      {"inputs": int32 [N, L], "targets": int32 [N, L], "loss_mask": float32 [N, L]}.

    References:
      Radford et al. 2019 (GPT-2 document packing with end-of-text separators).
    """
    stream = concat_documents(documents, eos_id=eos_id, bos_id=bos_id)
    return pack_stream(stream, seq_len, pad_id=pad_id, drop_remainder=drop_remainder)
