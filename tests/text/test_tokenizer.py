"""Byte and Hugging Face tokenizers: round trips, special ids, errors."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers import decoders as hf_decoders

from jaxkd.text import ByteTokenizer, HFTokenizer, load_tokenizer

TEXTS = ["def add(a, b):\n    return a + b\n", "héllo wörld ✓", "", "import os\nprint(os.sep)"]


def test_byte_tokenizer_round_trip_and_ids():
    tok = ByteTokenizer()
    assert tok.vocab_size == 259
    assert {tok.pad_id, tok.bos_id, tok.eos_id} == {256, 257, 258}
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and len(ids) == len(text.encode("utf-8"))
        assert tok.decode(ids) == text
    ids = np.concatenate([[tok.bos_id], tok.encode("ab"), [tok.eos_id, tok.pad_id]])
    assert tok.decode(ids) == "ab"
    assert tok.decode(iter([104, 105])) == "hi"
    assert tok.encode_batch(["a", "bc"])[1].tolist() == [98, 99]
    with pytest.raises(TypeError, match="text"):
        tok.encode(b"bytes")


def _train_hf(path):
    hf = Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = hf_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<|endoftext|>", "<pad>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(TEXTS * 5, trainer=trainer)
    hf.save(str(path))
    return hf


def test_hf_tokenizer_from_a_trained_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    hf = _train_hf(path)
    tok = load_tokenizer(str(path), pad_token="<pad>", bos_token="<s>")
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == hf.get_vocab_size(with_added_tokens=True)
    assert tok.eos_id == hf.token_to_id("<|endoftext|>")  # found by its usual name
    assert tok.pad_id == hf.token_to_id("<pad>") and tok.bos_id == hf.token_to_id("<s>")
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and (ids < tok.vocab_size).all()
        assert tok.decode(ids) == text
    # BPE merges: the training text takes fewer tokens than bytes.
    assert len(tok.encode(TEXTS[0])) < len(TEXTS[0].encode())
    padded = np.concatenate([tok.encode("return a"), [tok.eos_id, tok.pad_id, tok.pad_id]])
    assert tok.decode(padded) == "return a"
    assert [a.tolist() for a in tok.encode_batch(TEXTS)] == [tok.encode(t).tolist() for t in TEXTS]
    # Without a pad token, EOS pads.
    assert HFTokenizer.from_file(path).pad_id == tok.eos_id


def test_hf_tokenizer_errors(tmp_path):
    path = tmp_path / "tokenizer.json"
    _train_hf(path)
    with pytest.raises(ValueError, match=r"pad_token.*<nope>"):
        HFTokenizer.from_file(path, pad_token="<nope>")
    with pytest.raises(ValueError, match="path"):
        load_tokenizer(str(tmp_path / "missing.json"))
    bare = Tokenizer(models.BPE())
    with pytest.raises(ValueError, match="eos_token"):
        HFTokenizer(bare)
    with pytest.raises(ValueError, match="no options"):
        load_tokenizer("byte", eos_token="x")
