"""TFDS text -> packed windows -> Grain batches, for the local corpus and tiny_shakespeare."""

import collections

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxkd.text import (
    ByteTokenizer,
    TextFiles,
    TextFilesConfig,
    lm_eval_batches,
    lm_train_batches,
    load_packed,
    pack_texts,
    read_texts,
)
from jaxkd.text.lm_data import shuffled_batches


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    for i in range(24):
        (root / f"f{i}.py").write_text(f"def f{i}():\n    return {i} * 'é'\n" * (1 + i % 4))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    config = TextFilesConfig(
        name="tiny", root=str(root), validation_fraction=0.25, test_fraction=0.25
    )
    TextFiles(config=config, data_dir=data_dir).download_and_prepare()
    return data_dir


def test_load_packed_from_the_text_files_corpus(corpus_dir):
    tok = ByteTokenizer()
    texts = read_texts("text_files/tiny", "train", data_dir=corpus_dir)
    packed = load_packed("text_files/tiny", "train", tok, 16, data_dir=corpus_dir)
    assert packed.inputs.shape[1] == 16 and len(packed) == packed.inputs.shape[0]
    assert packed.num_documents == len(texts)
    assert packed.num_bytes == sum(len(t.encode()) for t in texts)
    # Byte tokens: one target per byte plus one EOS per document, minus the first token.
    assert packed.num_tokens == packed.num_bytes + len(texts) - 1
    # The windows, less their one-token overlaps, are the documents joined by EOS.
    stream = np.concatenate([packed.inputs[0], packed.targets[packed.loss_mask == 1][15:]])
    assert tok.decode(stream) == "".join(texts)
    assert (stream == tok.eos_id).sum() == len(texts)
    assert (packed.targets[packed.loss_mask == 1] != tok.pad_id).all()
    bos = pack_texts(texts, tok, 16, add_bos=True)
    assert bos.inputs[0, 0] == tok.bos_id


def test_mock_tiny_shakespeare_through_the_same_path(tmp_path):
    tok = ByteTokenizer()
    with tfds.testing.mock_data(num_examples=2, data_dir=str(tmp_path)):
        texts = read_texts("tiny_shakespeare", "train")
        packed = load_packed("tiny_shakespeare", "test", tok, 8)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert packed.num_documents == 2 and packed.inputs.shape[1] == 8
    assert packed.num_tokens == packed.num_bytes + 2 - 1


def test_train_batches_shuffle_per_epoch_and_are_deterministic(corpus_dir):
    packed = load_packed("text_files/tiny", "train", ByteTokenizer(), 8, data_dir=corpus_dir)
    ds = lm_train_batches(packed, batch_size=4, seed=3, num_epochs=2, shard_index=0, shard_count=1)
    steps = len(packed) // 4
    assert len(ds) == 2 * steps
    batch = ds[0]
    assert batch["inputs"].shape == (4, 8) and batch["loss_mask"].shape == (4, 8)
    np.testing.assert_array_equal(batch["mask"], np.ones(4, np.float32))
    again = lm_train_batches(packed, batch_size=4, seed=3, shard_index=0, shard_count=1)[0]
    np.testing.assert_array_equal(batch["inputs"], again["inputs"])
    first = np.concatenate([ds[i]["inputs"] for i in range(steps)])
    second = np.concatenate([ds[steps + i]["inputs"] for i in range(steps)])
    assert not np.array_equal(first, second)  # a new order each epoch
    # One epoch is a permutation of the windows, less the last len % batch_size.
    available = collections.Counter(map(tuple, packed.inputs.tolist()))
    used = collections.Counter(map(tuple, first.tolist()))
    assert not used - available and len(first) == steps * 4


def test_shuffled_batches_are_the_shards_rows_of_one_global_order_per_epoch():
    examples = grain.MapDataset.range(10)
    whole = shuffled_batches(examples, batch_size=4, seed=3, num_epochs=3)
    shards = [
        shuffled_batches(examples, batch_size=4, seed=3, num_epochs=3, shard_index=p, shard_count=2)
        for p in range(2)
    ]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 3 * 2  # 10 // 4 per epoch
    epochs = []
    for e in range(3):
        rows = [np.asarray(whole[2 * e + b]) for b in range(2)]
        for b, row in enumerate(rows):
            # Process p holds rows p, p + 2 of each global batch.
            for p in range(2):
                np.testing.assert_array_equal(shards[p][2 * e + b], row[p::2])
        order = np.concatenate(rows)
        assert len(set(order.tolist())) == 8 and set(order.tolist()) <= set(range(10))
        epochs.append(order.tolist())
    assert epochs[0] != epochs[1] != epochs[2]  # a new order each epoch
    again = shuffled_batches(examples, batch_size=4, seed=3)
    assert [again[i].tolist() for i in range(6)] == [whole[i].tolist() for i in range(6)]
    with pytest.raises(ValueError, match=r"`batch_size`=11 leaves no full batch: 10 examples"):
        shuffled_batches(examples, batch_size=11, seed=0)
    with pytest.raises(ValueError, match=r"multiple of the number of processes \(2\), got 3"):
        shuffled_batches(examples, batch_size=3, seed=0, shard_index=0, shard_count=2)


def test_eval_batches_cover_every_window_once_across_shards(corpus_dir):
    packed = load_packed("text_files/tiny", "validation", ByteTokenizer(), 8, data_dir=corpus_dir)
    seen = []
    for shard in range(2):
        ds = lm_eval_batches(packed, batch_size=6, shard_index=shard, shard_count=2)
        for i in range(len(ds)):
            batch = ds[i]
            seen.extend(batch["inputs"][batch["mask"] == 1].tolist())
            pad = batch["mask"] == 0
            assert (batch["loss_mask"][pad] == 0).all()
    assert sorted(map(tuple, seen)) == sorted(map(tuple, packed.inputs.tolist()))
    with pytest.raises(ValueError, match="batch_size"):
        lm_eval_batches(packed, batch_size=5, shard_index=0, shard_count=2)
    with pytest.raises(ValueError, match="no full batch"):
        lm_train_batches(packed, batch_size=10_000, seed=0, shard_index=0, shard_count=1)


def test_read_texts_errors(tmp_path):
    with pytest.raises(ValueError, match="not a dataset"):
        read_texts("no_such_dataset_xyz", "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="not prepared"):
        read_texts("tiny_shakespeare", "train", data_dir=str(tmp_path))
