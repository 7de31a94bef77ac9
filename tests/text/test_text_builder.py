"""The `text_files` TFDS builder: split by file, deterministic, capped, stdlib default."""

import os
import sysconfig

import pytest
import tensorflow_datasets as tfds

from jaxkd.text import TextFiles, TextFilesConfig, python_stdlib_dir
from jaxkd.text.text_builder import list_files, split_of


def _corpus(root, n=30):
    for i in range(n):
        sub = root / ("pkg" if i % 3 else "other") / f"m{i}.py"
        sub.parent.mkdir(parents=True, exist_ok=True)
        sub.write_text(f"# module {i}\nVALUE = {i}\n" + "x = 1\n" * i)
    (root / "site-packages").mkdir()
    (root / "site-packages" / "dep.py").write_text("leaked = True\n")
    (root / "notes.txt").write_text("not python\n")


def _prepare(root, data_dir, name="t", **kwargs):
    config = TextFilesConfig(
        name=name, root=str(root), validation_fraction=0.2, test_fraction=0.2, **kwargs
    )
    builder = TextFiles(config=config, data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder.as_data_source()


def _paths(source):
    return sorted(source[i]["path"].decode() for i in range(len(source)))


def test_splits_are_by_file_and_follow_the_path_hash(tmp_path):
    _corpus(tmp_path / "src")
    sources = _prepare(tmp_path / "src", tmp_path / "data")
    paths = {split: _paths(src) for split, src in sources.items()}
    everything = [p for names in paths.values() for p in names]
    assert sorted(everything) == sorted(f"{'pkg' if i % 3 else 'other'}/m{i}.py" for i in range(30))
    assert len(set(everything)) == 30  # no file in two splits, no site-packages, no .txt
    assert all(paths[s] for s in ("train", "validation", "test"))
    for split, names in paths.items():
        assert all(split_of(p, 0.2, 0.2) == split for p in names)
    example = sources["train"][0]
    text = example["text"].decode()
    assert text == (tmp_path / "src" / example["path"].decode()).read_text()


def test_preparation_is_deterministic(tmp_path):
    _corpus(tmp_path / "src")
    a = _prepare(tmp_path / "src", tmp_path / "a")
    b = _prepare(tmp_path / "src", tmp_path / "b")
    for split in a:
        rows_a = [(a[split][i]["path"], a[split][i]["text"]) for i in range(len(a[split]))]
        rows_b = [(b[split][i]["path"], b[split][i]["text"]) for i in range(len(b[split]))]
        assert rows_a == rows_b


def test_caps_keep_a_hash_ordered_sample(tmp_path):
    _corpus(tmp_path / "src")
    config = TextFilesConfig(name="c", root=str(tmp_path / "src"), max_files=10)
    capped = list_files(config)
    assert len(capped) == 10
    full = list_files(TextFilesConfig(name="f", root=str(tmp_path / "src")))
    assert capped == full[:10]  # a prefix of one fixed order
    sizes = [path.stat().st_size for _, path in full]
    by_bytes = list_files(TextFilesConfig(name="b", root=str(tmp_path / "src"), max_bytes=100))
    # Files are added until the total reaches the cap.
    assert sum(sizes[: len(by_bytes) - 1]) < 100 <= sum(sizes[: len(by_bytes)])


def test_python_stdlib_default_corpus(tmp_path):
    root = python_stdlib_dir()
    assert os.path.isfile(os.path.join(root, "os.py"))
    assert os.path.samefile(root, sysconfig.get_paths()["stdlib"])
    config = TextFilesConfig(name="s", max_files=40)
    files = list_files(config)
    assert all(not {"site-packages", "test"} & set(rel.split("/")) for rel, _ in files)
    builder = tfds.builder("text_files/python_stdlib_small", data_dir=str(tmp_path))
    assert builder.builder_config.max_bytes == 2_000_000
    assert tfds.builder("text_files", data_dir=str(tmp_path)).builder_config.name == (
        "python_stdlib"
    )


def test_config_and_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="validation_fraction"):
        TextFilesConfig(name="x", validation_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="max_files"):
        TextFilesConfig(name="x", max_files=0)
    with pytest.raises(ValueError, match="root"):
        list_files(TextFilesConfig(name="x", root=str(tmp_path / "missing")))
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.py").write_text("a = 1\n")
    with pytest.raises(ValueError, match="without files"):
        _prepare(tmp_path / "one", tmp_path / "data", name="one")
