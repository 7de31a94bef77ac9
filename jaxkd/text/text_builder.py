"""A TFDS dataset of local text files, by default the running Python's standard library.

Importing this module registers the builder under the name `text_files`, so the corpus is
read like any TFDS dataset, `tfds.data_source("text_files", split="train")`, as
array_record shards (no TensorFlow). Each example is one file: {"text", "path"}.

Splits are by file, decided by a hash of the file's path relative to the root: a file is
in the same split on every machine and run, and no file contributes to two splits, so
held-out text never shares a file with training text.

Configs:
  * `python_stdlib` (default): every .py file of the standard library of the interpreter
    that prepares it (found from `os.__file__`), without tests, `site-packages` and caches
    (about 12 MB for CPython 3.11). The corpus differs between Python versions; the data
    dir keeps the first one prepared.
  * `python_stdlib_small`: the same files capped at 2 MB, for quick experiments.
  * any `TextFilesConfig(name=..., root=..., pattern=...)` passed as `config=` for other
    directories.

References: TFDS `GeneratorBasedBuilder`; array_record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Iterator
from typing import Any, ClassVar

import tensorflow_datasets as tfds

from jaxkd.data._builder import ArrayRecordBuilder

SPLITS = ("train", "validation", "test")
DEFAULT_EXCLUDE = ("site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__")


def python_stdlib_dir() -> str:
    """Directory of the running interpreter's standard library (where `os` comes from)."""
    return os.path.dirname(os.path.abspath(os.__file__))


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
    """Which files make the corpus and how they are split.

    Attributes:
      root: directory searched recursively; None is `python_stdlib_dir()`.
      pattern: glob of file names, e.g. "*.py" or "*.txt".
      exclude_dirs: directory names whose files are left out, at any depth.
      validation_fraction: expected fraction of files in `validation`.
      test_fraction: expected fraction of files in `test`.
      max_files: keep at most this many files (None: all).
      max_bytes: keep files until their total size reaches this (None: no cap).
    """

    root: str | None = None
    pattern: str = "*.py"
    exclude_dirs: tuple[str, ...] = DEFAULT_EXCLUDE
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    max_files: int | None = None
    max_bytes: int | None = None

    def __post_init__(self):
        fractions = (self.validation_fraction, self.test_fraction)
        if not all(0.0 <= f < 1.0 for f in fractions) or sum(fractions) >= 1.0:
            raise ValueError(
                "`validation_fraction` and `test_fraction` must be in [0, 1) with a sum "
                f"below 1, got {self.validation_fraction} and {self.test_fraction}."
            )
        for name in ("max_files", "max_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be None or positive, got {value}.")


def _hash_unit(relpath: str, salt: str = "") -> float:
    digest = hashlib.sha256((salt + relpath).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(relpath: str, validation_fraction: float, test_fraction: float) -> str:
    """The split of a file, from a hash of its '/'-separated path relative to the root.

    u = first 8 bytes of sha256(relpath) / 2^64; u < test -> "test",
    u < test + validation -> "validation", else "train".
    """
    u = _hash_unit(relpath)
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + validation_fraction else "train"


def list_files(config: TextFilesConfig) -> list[tuple[str, pathlib.Path]]:
    """The (relative path, path) of the files a config selects, in hash order, capped.

    Hash order (sorted by a hash of the path, not by name) makes a capped corpus a
    deterministic sample of the whole directory rather than its alphabetical head. The
    order hash is salted so that it is independent of the split hash: a capped corpus
    keeps the split fractions.
    """
    root = pathlib.Path(config.root or python_stdlib_dir())
    if not root.is_dir():
        raise ValueError(f"`root`={str(root)!r} is not a directory.")
    excluded = set(config.exclude_dirs)
    files = []
    for path in root.rglob(config.pattern):
        rel = path.relative_to(root)
        if path.is_file() and not excluded.intersection(rel.parts[:-1]):
            files.append((rel.as_posix(), path))
    files.sort(key=lambda item: (_hash_unit(item[0], salt="order:"), item[0]))
    if config.max_files is not None:
        files = files[: config.max_files]
    if config.max_bytes is not None:
        kept, total = [], 0
        for rel, path in files:
            if total >= config.max_bytes:
                break
            kept.append((rel, path))
            total += path.stat().st_size
        files = kept
    if not files:
        raise ValueError(f"No files match {config.pattern!r} under {str(root)!r}.")
    return files


class TextFiles(ArrayRecordBuilder):
    """DatasetBuilder for a directory of text files, one example per file."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "One example per file, split by path."}
    BUILDER_CONFIGS: ClassVar[list[TextFilesConfig]] = [
        TextFilesConfig(
            name="python_stdlib",
            description="The .py files of the running Python's standard library, no tests.",
        ),
        TextFilesConfig(
            name="python_stdlib_small",
            description="python_stdlib capped at 2 MB of source, for quick experiments.",
            max_bytes=2_000_000,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Local text files, one example per file, split by a hash of the path.",
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "path": tfds.features.Text()}
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # local files only
        config: TextFilesConfig = self.builder_config
        by_split: dict[str, list[tuple[str, pathlib.Path]]] = {s: [] for s in SPLITS}
        for rel, path in list_files(config):
            by_split[split_of(rel, config.validation_fraction, config.test_fraction)].append(
                (rel, path)
            )
        empty = [s for s in SPLITS if not by_split[s]]
        if empty:
            counts = {s: len(v) for s, v in by_split.items()}
            raise ValueError(
                f"Config {config.name!r} leaves split(s) {empty} without files ({counts}); "
                "raise max_files/max_bytes or the split fractions."
            )
        return {s: self._generate_examples(files) for s, files in by_split.items()}

    def _generate_examples(
        self, files: list[tuple[str, pathlib.Path]]
    ) -> Iterator[tuple[str, dict[str, str]]]:
        for rel, path in files:
            # A few stdlib files are Latin-1; the replacement character keeps them usable.
            text = path.read_bytes().decode("utf-8", errors="replace")
            yield rel, {"text": text, "path": rel}
