"""Tokenizers: bytes by default, or any Hugging Face `tokenizers` tokenizer.json file.

Both give `vocab_size`, the special ids `bos_id`, `eos_id`, `pad_id`, and
`encode(text) -> int32 array` / `decode(ids) -> str`. Neither adds special tokens while
encoding: packing (`jaxkd.text.packing`) places BOS/EOS itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


def _as_ids(ids: Iterable[int]) -> np.ndarray:
    if not hasattr(ids, "__array__") and not isinstance(ids, list | tuple):
        ids = list(ids)
    return np.asarray(ids, np.int64).reshape(-1)


@runtime_checkable
class Tokenizer(Protocol):
    """What the text pipeline and generation need from a tokenizer."""

    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> np.ndarray: ...

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: id b for byte b (0..255), then PAD 256, BOS 257, EOS 258.

    Every string round-trips exactly, no file is needed, and one token is one byte, so the
    model's cross-entropy in bits is directly bits per byte.

    References:
      Radford et al. 2019 (GPT-2 byte-level vocabulary base); Xue et al. 2022, "ByT5".
    """

    num_bytes = 256
    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259

    def encode(self, text: str) -> np.ndarray:
        """The UTF-8 bytes of `text` as int32 ids (no BOS/EOS added)."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str, got {type(text).__name__}.")
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`encode` of each text."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of the byte ids in `ids`; special ids are dropped, bad UTF-8 replaced."""
        ids = _as_ids(ids)
        data = ids[(ids >= 0) & (ids < self.num_bytes)].astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"


# Names a tokenizer.json commonly gives its end-of-sequence token (GPT-2/Qwen, Llama 2,
# Llama 3, Gemma, BERT).
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "[SEP]")


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` behind the `Tokenizer` interface.

    Args:
      tokenizer: the loaded `tokenizers.Tokenizer`.
      eos_token: the end-of-sequence token string; None picks the first of
        "<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "[SEP]" the vocabulary has.
      pad_token: the padding token string; None pads with EOS (padding is always masked).
      bos_token: the beginning-of-sequence token string, or None for none.

    Raises:
      ValueError: if a named token is not in the vocabulary, or no EOS can be found.

    References:
      Hugging Face `tokenizers` (tokenizer.json format).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        eos_token: str | None = None,
        pad_token: str | None = None,
        bos_token: str | None = None,
    ):
        self._tokenizer = tokenizer
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        if eos_token is None:
            found = [t for t in _EOS_CANDIDATES if tokenizer.token_to_id(t) is not None]
            if not found:
                raise ValueError(
                    "`eos_token` not given and none of "
                    f"{', '.join(_EOS_CANDIDATES)} is in the vocabulary; pass eos_token=."
                )
            eos_token = found[0]
        self.eos_id = self._id(eos_token, "eos_token")
        self.pad_id = self.eos_id if pad_token is None else self._id(pad_token, "pad_token")
        self.bos_id = None if bos_token is None else self._id(bos_token, "bos_token")

    def _id(self, token: str, argument: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"`{argument}`={token!r} is not in the tokenizer's vocabulary.")
        return int(token_id)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> HFTokenizer:
        """Loads a tokenizer.json file; `kwargs` name the special tokens (see the class)."""
        from tokenizers import Tokenizer as _Tokenizer  # optional dependency

        if not os.path.isfile(path):
            raise ValueError(f"`path`={os.fspath(path)!r} is not a tokenizer.json file.")
        return cls(_Tokenizer.from_file(os.fspath(path)), **kwargs)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` as int32, without the tokenizer's own special tokens."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str, got {type(text).__name__}.")
        return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`encode` of each text, run in parallel by the tokenizers library."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; special tokens (and padding) are skipped."""
        ids = _as_ids(ids)
        return self._tokenizer.decode(ids[ids != self.pad_id].tolist(), skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def load_tokenizer(name: str = "byte", **kwargs: Any) -> ByteTokenizer | HFTokenizer:
    """A tokenizer by name: "byte" for `ByteTokenizer`, else a path to a tokenizer.json.

    Args:
      name: "byte" or the path of a Hugging Face tokenizer.json file.
      **kwargs: special-token names for `HFTokenizer` (eos_token, pad_token, bos_token).

    Returns:
      The tokenizer.

    References:
      Hugging Face `tokenizers`.
    """
    if name == "byte":
        if kwargs:
            raise ValueError(f"The byte tokenizer takes no options, got {sorted(kwargs)}.")
        return ByteTokenizer()
    return HFTokenizer.from_file(name, **kwargs)
