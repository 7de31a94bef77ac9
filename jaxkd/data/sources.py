"""TFDS random-access data sources (array_record, no TensorFlow) and what they contain.

Every dataset is opened by its TFDS name through `tfds.data_source`, whether it is
MNIST-1D (generated locally on first use), CIFAR-10/100, ImageNet or any other TFDS
dataset prepared as array_record. `DatasetSpec` records which feature is the model input,
which is the label and how many classes there are, read from the dataset's own
`DatasetInfo` (its `supervised_keys` and `ClassLabel`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from jaxkd.data import mnist1d_builder

# Builders that generate their data locally: reading them may prepare them, since that
# needs no network. Everything else must already be prepared under the data dir.
_LOCAL_BUILDERS = (mnist1d_builder.Mnist1d,)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a TFDS dataset holds, as the pipeline needs it.

    Attributes:
      name: the TFDS name it was opened with, e.g. "cifar100" or "mnist1d/transfer".
      input_key: feature that becomes the batch's "inputs".
      label_key: feature that becomes the batch's "label".
      num_classes: number of classes of the label.
      family: preprocessing family: "mnist1d", "cifar", "imagenet", or "generic".
      input_shape: static shape of the input feature (None for variable dimensions).
    """

    name: str
    input_key: str
    label_key: str
    num_classes: int
    family: str
    input_shape: tuple[int | None, ...]


def _family(name: str) -> str:
    base = name.split("/")[0].split(":")[0]
    if base == "mnist1d":
        return "mnist1d"
    if base in ("cifar10", "cifar100"):
        return "cifar"
    if base.startswith("imagenet"):
        return "imagenet"
    return "generic"


def _builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        first_line = str(e).splitlines()[0] if str(e) else name
        raise ValueError(
            f"`name`={name!r} is not a dataset TFDS knows ({first_line}); expected a TFDS "
            "name such as 'mnist1d', 'mnist1d/transfer', 'cifar10', 'cifar100' or "
            "'imagenet2012'."
        ) from None
    except ValueError as e:  # e.g. an unknown config; TFDS appends a multi-line listing
        first_line = str(e).splitlines()[0].split(" Here are ")[0]
        raise ValueError(f"`name`={name!r}: {first_line}") from None


def dataset_spec(name: str, *, data_dir: str | None = None) -> DatasetSpec:
    """Reads the input/label features and class count of a TFDS dataset.

    Args:
      name: TFDS name, optionally with config and version ("mnist1d/transfer:1.0.0").
      data_dir: TFDS data dir; None uses `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.

    Returns:
      The dataset's `DatasetSpec`.

    Raises:
      ValueError: if TFDS does not know `name`, or it has no (input, label) supervised keys
        with a `ClassLabel` label.

    References: TFDS `DatasetInfo.supervised_keys`.
    """
    info = _builder(name, data_dir).info
    keys = info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise ValueError(
            f"Dataset {name!r} must declare `supervised_keys` as (input, label) feature "
            f"names, got {keys!r}."
        )
    input_key, label_key = keys
    label = info.features[label_key]
    if not isinstance(label, tfds.features.ClassLabel):
        raise ValueError(
            f"Dataset {name!r}: label feature {label_key!r} must be a ClassLabel, got "
            f"{type(label).__name__}."
        )
    return DatasetSpec(
        name=name,
        input_key=input_key,
        label_key=label_key,
        num_classes=int(label.num_classes),
        family=_family(name),
        input_shape=tuple(info.features[input_key].shape),
    )


def open_source(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    download: bool | None = None,
) -> Sequence[dict[str, Any]]:
    """Opens one split of a TFDS dataset as a random-access source (array_record).

    Args:
      name: TFDS name, e.g. "mnist1d", "cifar100", "imagenet2012".
      split: TFDS split string, e.g. "train", "test", "train[:90%]", "unlabeled".
      data_dir: TFDS data dir; None uses `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
      download: prepare the dataset if it is missing. None (the default) does so only for
        datasets generated locally (MNIST-1D); others must be prepared beforehand, because
        reading must never start a large download.

    Returns:
      A `Sequence` of decoded examples (numpy arrays and Python scalars), readable by
      `grain.MapDataset.source`.

    Raises:
      ValueError: if TFDS does not know `name`, or the dataset is not prepared as
        array_record under the data dir.

    References: `tfds.data_source` (TFDS 4.9).
    """
    builder = _builder(name, data_dir)
    if download is None:
        download = isinstance(builder, _LOCAL_BUILDERS)
    try:
        return tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=download,
            download_and_prepare_kwargs={"file_format": "array_record"},
        )
    except (NotImplementedError, AssertionError, FileNotFoundError) as e:
        raise ValueError(
            f"Dataset {name!r} is not prepared as array_record in {builder.data_dir} "
            f"({type(e).__name__}). Prepare it once with `tfds build {name} "
            "--file_format=array_record`, or call this with download=True."
        ) from None
