"""The `jaxkd cache-teacher` and `jaxkd generate` verbs on a saved tiny teacher."""

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from _lm_helpers import TEACHER, VOCAB

from jaxkd.lm import CompletionSource, TopKCache, load_lm, save_lm, topk_fn
from jaxkd.lm.cli import cache_teacher, generate
from jaxkd.text import ByteTokenizer, load_packed

DATA = ["--dataset", "text_files/python_stdlib_small", "--seq-len", "8", "--batch-size", "4"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, teacher):
    path = tmp_path_factory.mktemp("run") / "teacher"
    _, _model, t_state = teacher
    save_lm(path, TEACHER, t_state.params, vocab_size=VOCAB)
    return path, t_state


def test_save_and_load_round_trip(saved):
    path, t_state = saved
    _module, params, meta = load_lm(path)
    assert meta["vocab_size"] == VOCAB and meta["tokenizer"] == "byte"
    jax.tree.map(np.testing.assert_array_equal, params, t_state.params)
    with pytest.raises(FileNotFoundError, match="is not a saved LM"):
        load_lm(path.parent)


def test_cache_teacher_verb_stores_the_live_top_k(saved, tmp_path, capsys):
    path, t_state = saved
    out = tmp_path / "cache"
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        status = cache_teacher(["--teacher", str(path), "--out", str(out), "--k", "5", *DATA])
        packed = load_packed("text_files/python_stdlib_small", "train", ByteTokenizer(), 8)
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    cache = TopKCache(out)
    assert printed["num_windows"] == len(cache) == len(packed)
    assert cache.meta["split"] == "train" and cache.meta["teacher"]
    module, _, _ = load_lm(path)
    from jaxkd.lm import lm_model

    model = lm_model(module, vocab_size=VOCAB)
    _, ids = topk_fn(model.apply, 5)(t_state, packed.inputs)
    for i in range(len(cache)):
        np.testing.assert_array_equal(cache[i]["teacher_topk_ids"], np.sort(ids[i], -1))


def test_generate_verb_writes_completions(saved, tmp_path, capsys):
    path, _ = saved
    out = tmp_path / "gen"
    args = [
        "--teacher",
        str(path),
        "--out",
        str(out),
        "--prompt-len",
        "3",
        "--max-new-tokens",
        "6",
        "--temperature",
        "0.7",
        "--top-p",
        "0.9",
        *DATA,
    ]
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        assert generate(args) == 0
    printed = json.loads(capsys.readouterr().out)
    source = CompletionSource(out)
    assert printed["num_examples"] == len(source) > 0
    _prompt, p, completion, g = source.example(0)
    assert p == 3 and 1 <= g <= 6 and completion.shape == (6,)
    assert source.meta["temperature"] == 0.7 and source.meta["top_p"] == 0.9


def test_bad_command_lines_raise(saved, tmp_path):
    path, _ = saved
    with pytest.raises(ValueError, match="the following arguments are required"):
        cache_teacher(["--teacher", str(path)])
    with pytest.raises(FileNotFoundError, match="is not a saved LM"):
        generate(["--teacher", str(tmp_path), "--out", str(tmp_path / "x")])
