"""CIFAR-10/100 and ImageNet through the same path, on `tfds.testing.mock_data`."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxkd.data import Preprocess, Source, augment, dataset_spec, eval_pipeline, train_pipeline

IMAGE_DATASETS = [
    ("cifar10", "test", 32, 10, augment.CIFAR10_MEAN),
    ("cifar100", "test", 32, 100, augment.CIFAR100_MEAN),
    ("imagenet2012", "validation", 224, 1000, augment.IMAGENET_MEAN),
]


@pytest.fixture(autouse=True)
def mock_tfds():
    with tfds.testing.mock_data(num_examples=24):
        yield


@pytest.mark.parametrize("name, eval_split, size, num_classes, mean", IMAGE_DATASETS)
def test_train_and_eval_batches(name, eval_split, size, num_classes, mean):
    spec = dataset_spec(name)
    assert (spec.input_key, spec.label_key, spec.num_classes) == ("image", "label", num_classes)
    preprocess = Preprocess.for_dataset(spec)
    assert preprocess.mean == mean

    train = train_pipeline(name, batch_size=8, seed=0, num_epochs=1)
    batch = train.dataset[0]
    assert train.steps_per_epoch == 3
    assert batch["inputs"].shape == (8, size, size, 3) and batch["inputs"].dtype == np.float32
    assert batch["label"].shape == (8,) and np.all(
        (0 <= batch["label"]) & (batch["label"] < num_classes)
    )
    assert "teacher_inputs" not in batch

    evaluation = eval_pipeline(name, split=eval_split, batch_size=16)
    last = evaluation.dataset[len(evaluation) - 1]
    assert len(evaluation) == 2 and last["inputs"].shape == (16, size, size, 3)
    assert last["mask"].tolist() == [1.0] * 8 + [0.0] * 8


def test_cifar_eval_view_is_the_normalised_image():
    source = tfds.data_source("cifar100", split="test")
    batch = eval_pipeline("cifar100", batch_size=4, with_index=True).dataset[0]
    for row, index in zip(batch["inputs"], batch["index"], strict=True):
        image = source[int(index)]["image"].astype(np.float64) / 255
        want = (image - np.array(augment.CIFAR100_MEAN)) / np.array(augment.CIFAR100_STD)
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-5)


def _views_by_index(pipeline, epoch):
    views = {}
    for j in range(pipeline.steps_per_epoch):
        batch = pipeline.dataset[epoch * pipeline.steps_per_epoch + j]
        for row, index in zip(batch["inputs"], batch["index"], strict=True):
            views[int(index)] = row
    return views


def test_augmentation_depends_on_seed_epoch_and_index_only():
    def make(**kwargs):
        return train_pipeline("cifar10", batch_size=4, seed=11, with_index=True, **kwargs)

    whole = make()
    halves = [make(shard_index=p, shard_count=2) for p in range(2)]
    for epoch in (0, 1):
        views = _views_by_index(whole, epoch)
        for half in halves:
            for index, row in _views_by_index(half, epoch).items():
                np.testing.assert_array_equal(row, views[index])
    epoch0, epoch1 = _views_by_index(whole, 0), _views_by_index(whole, 1)
    assert any(not np.array_equal(epoch0[i], epoch1[i]) for i in epoch0)
    source = tfds.data_source("cifar10", split="train")
    clean = Preprocess.for_dataset(dataset_spec("cifar10")).eval_view(source[0]["image"])
    assert not np.array_equal(epoch0[0], clean)  # the training view is augmented


def test_teacher_views():
    def make(view):
        return train_pipeline(
            "cifar10", batch_size=24, seed=2, teacher_view=view, with_index=True
        ).dataset[0]

    same, independent, clean = make("same"), make("independent"), make("clean")
    # Function matching: the teacher scores the student's own view, no second copy.
    assert "teacher_inputs" not in same
    # The student's view does not depend on what the teacher sees.
    np.testing.assert_array_equal(same["inputs"], independent["inputs"])
    np.testing.assert_array_equal(same["inputs"], clean["inputs"])
    differs = [
        not np.array_equal(a, b)
        for a, b in zip(independent["inputs"], independent["teacher_inputs"], strict=True)
    ]
    assert sum(differs) > len(differs) // 2
    evaluation = eval_pipeline("cifar10", split="train", batch_size=24, with_index=True)
    eval_rows = evaluation.dataset[0]["inputs"][clean["index"]]
    np.testing.assert_array_equal(clean["teacher_inputs"], eval_rows)


def test_mixup_mixes_inputs_and_targets_consistently():
    plain = train_pipeline("cifar10", batch_size=12, seed=4, teacher_view="independent")
    mixed = train_pipeline(
        "cifar10", batch_size=12, seed=4, teacher_view="independent", mixup_alpha=0.4
    )
    a, b = plain.dataset[1], mixed.dataset[1]
    lam = b["mixup_lambda"][0]
    assert np.all(b["mixup_lambda"] == lam) and 0 <= lam <= 1
    np.testing.assert_array_equal(b["label"], a["label"])
    onehot = np.eye(10, dtype=np.float32)
    want = lam * onehot[b["label"]] + (1 - lam) * onehot[b["label_mix"]]
    np.testing.assert_allclose(b["soft_label"], want, rtol=1e-6)
    np.testing.assert_allclose(b["soft_label"].sum(-1), 1.0, rtol=1e-6)
    for key in ("inputs", "teacher_inputs"):
        for i in range(12):
            # Some partner j of the unmixed batch gives row i, with the partner's label.
            candidates = lam * a[key][i] + (1 - lam) * a[key]
            errors = np.abs(candidates - b[key][i]).reshape(12, -1).max(-1)
            j = int(np.argmin(errors))
            assert errors[j] < 1e-4 and a["label"][j] == b["label_mix"][i]


def test_mixup_needs_one_label_space():
    with pytest.raises(ValueError, match="num_classes"):
        train_pipeline(
            [Source("cifar10"), Source("cifar100")], batch_size=8, seed=0, mixup_alpha=0.2
        )


def test_imagenet_crops_images_of_any_size():
    source = tfds.data_source("imagenet2012", split="train")
    shapes = {source[i]["image"].shape for i in range(6)}
    assert len(shapes) > 1  # mock images come in several sizes
    pre = Preprocess.for_dataset(dataset_spec("imagenet2012"), image_size=64)
    rng = np.random.default_rng(0)
    for i in range(6):
        assert pre.train_view(source[i]["image"], rng).shape == (64, 64, 3)
        assert pre.eval_view(source[i]["image"]).shape == (64, 64, 3)
