"""The input pipelines of an experiment, from `config.data`."""

from __future__ import annotations

import ml_collections

from jaxkd.data import Pipeline, Preprocess, Source, dataset_spec, eval_pipeline, open_source
from jaxkd.data import train_pipeline as make_train_pipeline


def data_dir_of(config: ml_collections.ConfigDict, data_dir: str | None = None) -> str | None:
    """The TFDS data dir: `data_dir` if given, else `config.data.data_dir` (None: TFDS default).

    Args:
      config: the experiment config.
      data_dir: an explicit data dir, or None.

    Returns:
      The data dir, or None for `$TFDS_DATA_DIR` / `~/tensorflow_datasets`.

    References:
      TFDS, `tfds.data_source(..., data_dir=...)`.
    """
    return data_dir if data_dir is not None else config.data.get("data_dir")


def _source(config, split: str, *, labeled: bool, weight: float, data_dir) -> Source:
    weight = float(weight)
    preprocess = None
    if not config.data.augment:
        preprocess = Preprocess.for_dataset(
            dataset_spec(config.data.name, data_dir=data_dir), augment=False
        )
    return Source(config.data.name, split, weight=weight, labeled=labeled, preprocess=preprocess)


def train_sources(
    config: ml_collections.ConfigDict, *, data_dir: str | None = None
) -> list[Source]:
    """The training sources: `train_split`, plus `unlabeled_split` read without labels.

    With an unlabelled split the two are mixed by weight: the labelled split by its size,
    the unlabelled one by `unlabeled_weight` (0: by its size, so that an epoch is one pass
    over both). Its examples carry label −1, which the task loss ignores while the
    distillation terms train on them (a transfer set).

    Args:
      config: the experiment config.
      data_dir: TFDS data dir (overrides `config.data.data_dir`).

    Returns:
      One or two `jaxkd.data.Source`s.

    References:
      Hinton et al., "Distilling the Knowledge in a Neural Network", 2015 (transfer set).
    """
    data_dir = data_dir_of(config, data_dir)
    unlabeled = config.data.unlabeled_split
    if not unlabeled:
        split = config.data.train_split
        return [_source(config, split, labeled=True, weight=1.0, data_dir=data_dir)]
    size = len(open_source(config.data.name, config.data.train_split, data_dir=data_dir))
    weight = float(config.data.unlabeled_weight) or float(
        len(open_source(config.data.name, unlabeled, data_dir=data_dir))
    )
    return [
        _source(config, config.data.train_split, labeled=True, weight=size, data_dir=data_dir),
        _source(config, unlabeled, labeled=False, weight=weight, data_dir=data_dir),
    ]


def build_train_pipeline(
    config: ml_collections.ConfigDict, *, with_index: bool = False, data_dir: str | None = None
) -> Pipeline:
    """The training `Pipeline`: shuffled per epoch from `config.seed`, repeated forever.

    Args:
      config: the experiment config (`config.data`, `config.seed`).
      with_index: add each example's index in its split ("index", for CRD).
      data_dir: TFDS data dir (overrides `config.data.data_dir`).

    Returns:
      The `Pipeline` (`iterator()` for streaming, `epoch(e)` for in-memory epochs).

    References:
      Grain `MapDataset` (see `jaxkd.data.train_pipeline`).
    """
    data_dir = data_dir_of(config, data_dir)
    sources = train_sources(config, data_dir=data_dir)
    return make_train_pipeline(
        sources if len(sources) > 1 else sources[0],
        batch_size=int(config.data.batch_size),
        seed=int(config.seed),
        teacher_view=config.data.teacher_view,
        mixup_alpha=float(config.data.mixup_alpha),
        with_index=with_index,
        data_dir=data_dir,
        # In-memory runs read every epoch up front: decode the records once, not per epoch.
        cache=bool(config.data.in_memory),
    )


def build_eval_pipeline(
    config: ml_collections.ConfigDict, *, split: str | None = None, data_dir: str | None = None
) -> Pipeline:
    """One ordered, padded pass over `split` (default `config.data.eval_split`).

    Args:
      config: the experiment config.
      split: the split to evaluate on.
      data_dir: TFDS data dir (overrides `config.data.data_dir`).

    Returns:
      The evaluation `Pipeline`.

    References:
      Grain `MapDataset` (see `jaxkd.data.eval_pipeline`).
    """
    return eval_pipeline(
        config.data.name,
        batch_size=int(config.data.eval_batch_size),
        split=split or config.data.eval_split,
        data_dir=data_dir_of(config, data_dir),
    )
