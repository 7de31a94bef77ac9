"""MNIST-1D as a TFDS dataset generated locally (no network, no TensorFlow).

Importing this module registers the builder under the name `mnist1d`, so the dataset is
read like any other TFDS dataset: `tfds.data_source("mnist1d", split="train")`. The first
read generates it into the TFDS data dir (`data_dir=`, else `$TFDS_DATA_DIR`, else
`~/tensorflow_datasets`) as array_record shards; later reads reuse them.

Configs:
  * `paper` (default): the paper's set, 5,000 examples from seed 42 split 4,000 train /
    1,000 test, exactly what `mnist1d.data.make_dataset` returns with its default arguments.
  * `transfer`: the same `train` and `test` splits plus an `unlabeled` split of 50,000
    examples drawn from the generator with another seed (seed 1). It is the transfer set on
    which a teacher writes the targets. Its examples keep the generator's class under
    `label` for diagnostics only (e.g. measuring pseudo-label accuracy); read it with
    `Source(..., labeled=False)` in `jaxkd.data` so training never sees it.

References: Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024
(arXiv:2011.14439).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from mnist1d.data import get_dataset_args, make_dataset

from jaxkd.data._builder import ArrayRecordBuilder

_CITATION = """\
@inproceedings{greydanus2024scaling,
  title={Scaling Down Deep Learning with {MNIST}-{1D}},
  author={Greydanus, Sam and Kobak, Dmitry},
  booktitle={International Conference on Machine Learning},
  year={2024}
}"""

SEQUENCE_LENGTH = 40
NUM_CLASSES = 10


@dataclasses.dataclass(eq=False)
class Mnist1dConfig(tfds.core.BuilderConfig):
    """Generator settings of one MNIST-1D variant.

    Attributes:
      num_samples: size of the labelled set, split into train and test.
      train_fraction: fraction of the labelled set in `train` (the paper uses 0.8).
      seed: generator seed of the labelled set (the paper uses 42).
      num_unlabeled: size of the extra `unlabeled` split; 0 leaves the split out.
      unlabeled_seed: generator seed of the `unlabeled` split (must differ from `seed`).
    """

    num_samples: int = 5000
    train_fraction: float = 0.8
    seed: int = 42
    num_unlabeled: int = 0
    unlabeled_seed: int = 1

    def __post_init__(self):
        if self.num_samples < NUM_CLASSES or self.num_samples % NUM_CLASSES:
            raise ValueError(
                f"`num_samples` must be a positive multiple of {NUM_CLASSES} (the generator "
                f"draws the same number per class), got {self.num_samples}."
            )
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"`train_fraction` must be in (0, 1), got {self.train_fraction}.")
        if self.num_unlabeled < 0 or self.num_unlabeled % NUM_CLASSES:
            raise ValueError(
                f"`num_unlabeled` must be a non-negative multiple of {NUM_CLASSES}, got "
                f"{self.num_unlabeled}."
            )
        if self.num_unlabeled and self.unlabeled_seed == self.seed:
            raise ValueError(
                f"`unlabeled_seed` must differ from `seed` ({self.seed}), otherwise the "
                "unlabeled split repeats the labelled examples."
            )


@contextlib.contextmanager
def _preserve_global_rng() -> Iterator[None]:
    # `make_dataset` seeds the global `random` and `np.random` states; a user's process
    # must not have its own random streams reset as a side effect of reading a dataset.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def generate(num_samples: int, seed: int, train_fraction: float) -> dict[str, np.ndarray]:
    """Draws MNIST-1D examples with the reference generator (`mnist1d.data.make_dataset`).

    The generator standardises the signals of one draw by their global mean and standard
    deviation; each call (each seed) is standardised by its own statistics.

    Args:
      num_samples: number of examples, a multiple of 10.
      seed: generator seed.
      train_fraction: fraction returned under "x"/"y"; the rest is under "x_test"/"y_test".

    Returns:
      A dict with float32 "x" [n, 40], int64 "y" [n], "x_test", "y_test".

    References: Greydanus & Kobak, ICML 2024 (arXiv:2011.14439).
    """
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    args.train_split = train_fraction
    with _preserve_global_rng():
        data = make_dataset(args)
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int64),
    }


class Mnist1d(ArrayRecordBuilder):
    """DatasetBuilder for MNIST-1D, generated locally with the `mnist1d` package."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Generated with mnist1d.data.make_dataset."}
    BUILDER_CONFIGS: ClassVar[list[Mnist1dConfig]] = [
        Mnist1dConfig(
            name="paper",
            description="The paper's 5,000 examples (seed 42): 4,000 train, 1,000 test.",
        ),
        Mnist1dConfig(
            name="transfer",
            description=(
                "The paper's train/test splits plus 50,000 examples from seed 1 in an "
                "`unlabeled` split, a transfer set for distillation."
            ),
            num_unlabeled=50_000,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="MNIST-1D: 1-D signals of the ten digit templates, 40 samples long.",
            features=tfds.features.FeaturesDict(
                {
                    "x": tfds.features.Tensor(shape=(SEQUENCE_LENGTH,), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("x", "label"),
            homepage="https://github.com/greydanus/mnist1d",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # generated locally
        config: Mnist1dConfig = self.builder_config
        labelled = generate(config.num_samples, config.seed, config.train_fraction)
        splits = {
            "train": self._generate_examples(labelled["x"], labelled["y"]),
            "test": self._generate_examples(labelled["x_test"], labelled["y_test"]),
        }
        if config.num_unlabeled:
            extra = generate(config.num_unlabeled, config.unlabeled_seed, train_fraction=1.0)
            splits["unlabeled"] = self._generate_examples(extra["x"], extra["y"])
        return splits

    def _generate_examples(self, x: np.ndarray, y: np.ndarray) -> Iterator[tuple[int, dict]]:
        for i in range(len(y)):
            yield i, {"x": x[i], "label": int(y[i])}
