"""Packing documents into LM windows: layout, masks, every token a target once."""

import numpy as np
import pytest

from jaxkd.text import concat_documents, pack_documents, pack_stream


def test_concat_documents_separators():
    stream = concat_documents([[1, 2], [], [3]], eos_id=9, bos_id=8)
    np.testing.assert_array_equal(stream, [8, 1, 2, 9, 8, 9, 8, 3, 9])
    np.testing.assert_array_equal(concat_documents([[1], [2]], eos_id=9), [1, 9, 2, 9])


def test_pack_stream_windows_and_padding_mask():
    out = pack_stream(np.arange(10), 4, pad_id=-1)
    # 9 targets -> ceil(9 / 4) = 3 windows, starting every 4 tokens.
    np.testing.assert_array_equal(out["inputs"], [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, -1, -1]])
    np.testing.assert_array_equal(out["targets"], [[1, 2, 3, 4], [5, 6, 7, 8], [9, -1, -1, -1]])
    np.testing.assert_array_equal(out["loss_mask"], [[1] * 4, [1] * 4, [1, 0, 0, 0]])
    assert out["inputs"].dtype == np.int32 and out["loss_mask"].dtype == np.float32
    dropped = pack_stream(np.arange(10), 4, pad_id=-1, drop_remainder=True)
    assert dropped["inputs"].shape == (2, 4) and dropped["loss_mask"].all()


@pytest.mark.parametrize("n, seq_len", [(2, 1), (17, 4), (33, 8), (100, 7)])
def test_every_token_after_the_first_is_a_target_exactly_once(n, seq_len):
    stream = np.arange(1000, 1000 + n)
    out = pack_stream(stream, seq_len, pad_id=0)
    predicted = out["targets"][out["loss_mask"] == 1]
    np.testing.assert_array_equal(np.sort(predicted), stream[1:])
    # Each target follows its input in the stream.
    inputs = out["inputs"][out["loss_mask"] == 1]
    np.testing.assert_array_equal(predicted - inputs, 1)


def test_pack_documents_end_to_end_and_errors():
    out = pack_documents([[5, 6, 7], [8]], 3, eos_id=1, pad_id=0)
    np.testing.assert_array_equal(out["inputs"], [[5, 6, 7], [1, 8, 1]])
    np.testing.assert_array_equal(out["targets"], [[6, 7, 1], [8, 1, 0]])
    np.testing.assert_array_equal(out["loss_mask"], [[1, 1, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="seq_len"):
        pack_stream(np.arange(5), 0, pad_id=0)
    with pytest.raises(ValueError, match="no window"):
        pack_documents([], 4, eos_id=1, pad_id=0)
    with pytest.raises(ValueError, match="no window"):
        pack_stream(np.arange(4), 4, pad_id=0, drop_remainder=True)
