"""The CIFAR-100 and ImageNet experiment configs: every recipe loads and says what it should."""

import pathlib

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxkd.cli_config import load_config_file
from jaxkd.experiment import objective_builder
from jaxkd.experiment.models import build_model
from jaxkd.models import create_model, list_models

CONFIGS = pathlib.Path(__file__).parents[2] / "experiments" / "configs"
CIFAR100 = CONFIGS / "cifar100.py"
IMAGENET = CONFIGS / "imagenet.py"
METHODS = ("kd", "dkd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "nst", "crd")
PAIRS = {  # the pairs the recipes must cover, with mdistiller's DKD β
    "resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4", 8.0),
    "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2", 6.0),
    "resnet56_resnet20": ("resnet56", "resnet20", 2.0),
}
# RepDistiller's scripts/run_cifar_distill.sh: -r (CE), and each term's weight (-a KD, -b).
EXPECTED = {
    "kd": (0.1, {"kd": 0.9}),
    "dkd": (1.0, {"dkd": 1.0}),
    "fitnet": (1.0, {"fitnet": 100.0}),
    "at": (1.0, {"at_stage1": 1000.0, "at_stage2": 1000.0, "at_stage3": 1000.0}),
    "sp": (1.0, {"sp": 3000.0}),
    "cc": (1.0, {"cc": 0.02}),
    "vid": (1.0, {"vid_stage1": 1.0, "vid_stage2": 1.0, "vid_stage3": 1.0}),
    "rkd": (1.0, {"rkd_distance": 25.0, "rkd_angle": 50.0}),
    "pkt": (1.0, {"pkt": 30000.0}),
    "nst": (1.0, {"nst_stage1": 50.0, "nst_stage2": 50.0, "nst_stage3": 50.0}),
    "crd": (1.0, {"crd": 0.8}),
    "crd+kd": (1.0, {"crd": 0.8, "kd": 1.0}),
}


def _cifar(arg):
    return load_config_file(f"{CIFAR100}:{arg}")


def _check_cifar_recipe(c, student, lr):
    assert (c.data.name, c.data.train_split, c.data.eval_split) == ("cifar100", "train", "test")
    assert c.data.batch_size == 64 and c.data.augment
    assert c.student.model == student
    assert (c.optimizer.name, c.optimizer.lr, c.optimizer.momentum) == ("sgd", lr, 0.9)
    assert c.optimizer.weight_decay == 5e-4
    assert (c.optimizer.schedule, c.optimizer.decay_factor) == ("piecewise", 0.1)
    assert list(c.optimizer.decay_epochs) == [150, 180, 210]
    assert c.num_epochs == 240


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("method", EXPECTED)
def test_cifar100_recipe(pair, method):
    teacher, student, beta = PAIRS[pair]
    c = _cifar(f"{pair},{method}")
    _check_cifar_recipe(c, student, 0.05)
    assert c.teacher.model == teacher and c.teacher.checkpoint == f"runs/cifar100/{teacher}"
    task_weight, weights = EXPECTED[method]
    assert c.objective.task_weight == task_weight
    assert {name: t.weight for name, t in c.objective.terms.items()} == weights
    valid_losses = objective_builder.loss_names()
    for t in c.objective.terms.values():
        assert t.loss in valid_losses
        assert {t.adapter, t.teacher_adapter} <= {None, *objective_builder.ADAPTERS}
        if t.loss in ("kd", "dkd"):
            assert t.hparams.temperature == 4.0
    if method == "dkd":
        dkd = c.objective.terms.dkd
        assert dict(dkd.hparams) == {"alpha": 1.0, "beta": beta, "temperature": 4.0}
        assert dkd.warmup_epochs == 20.0 and list(dkd.inputs) == ["label"]
    if method.startswith("crd"):
        crd = c.objective.terms.crd
        assert dict(crd.hparams) == {"num_negatives": 16384, "nce_t": 0.07, "momentum": 0.5}
        assert (crd.student, crd.adapter, crd.teacher_adapter) == ("pooled", "embed", "embed")
        assert list(crd.inputs) == ["index"] and crd.adapter_kwargs.feat_dim == 128
    if method == "fitnet":
        assert (c.objective.terms.fitnet.student, c.objective.terms.fitnet.adapter) == (
            "stage2",
            "hint",
        )


def test_cifar100_runs_from_labels():
    c = _cifar("resnet32x4")
    _check_cifar_recipe(c, "resnet32x4", 0.05)
    assert c.teacher.model == "" and not c.objective.terms and c.objective.task_weight == 1.0
    # RepDistiller and mdistiller train these students at lr 0.01.
    _check_cifar_recipe(_cifar("shufflenetv1"), "shufflenetv1", 0.01)
    c = _cifar("resnet32x4_shufflenetv2,kd")
    _check_cifar_recipe(c, "shufflenetv2", 0.01)


def test_cifar100_every_pair_and_method_loads():
    module = {}
    exec(compile(CIFAR100.read_text(), str(CIFAR100), "exec"), module)
    assert set(module["METHODS"]) == set(METHODS)
    models = set(list_models())
    for pair, (teacher, student, _) in module["PAIRS"].items():
        assert {teacher, student} <= models
        for method in METHODS:
            c = _cifar(f"{pair},{method}")
            stages = min(module["STAGES"][teacher], module["STAGES"][student])
            for t in c.objective.terms.values():
                for source in (t.student, t.teacher):
                    assert source in ("logits", "pooled") or source in {
                        f"stage{i}" for i in range(1, stages + 1)
                    }


@pytest.mark.parametrize("model", ["resnet8x4", "wrn_16_2", "resnet20", "vgg8"])
def test_stage_counts_match_the_models(model):
    module = {}
    exec(compile(CIFAR100.read_text(), str(CIFAR100), "exec"), module)
    abstract = nnx.eval_shape(lambda: create_model(model, num_classes=100, rngs=nnx.Rngs(0)))
    stages = {n for n in abstract.feature_names if n.startswith("stage") and "_" not in n}
    assert len(stages) == module["STAGES"][model]


def test_every_method_builds_its_objective():
    """Adapters and feature names fit the real feature shapes of resnet32x4 → resnet8x4."""
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    outputs = {}
    for name in ("resnet32x4", "resnet8x4"):
        model = build_model(name, {}, num_classes=100, abstract=True)
        apply = lambda p, s, x, model=model: model.apply(p, s, x, train=False)[0]
        outputs[name] = jax.eval_shape(apply, model.params, model.state, x)
    for method in EXPECTED:
        c = _cifar(f"resnet32x4_resnet8x4,{method}")
        objective = objective_builder.build_objective(
            c,
            student_outputs=outputs["resnet8x4"],
            teacher_outputs=outputs["resnet32x4"],
            steps_per_epoch=10,
            num_data=100,
        )
        assert [t.name for t in objective.terms] == ["task", *c.objective.terms]


@pytest.mark.parametrize(
    "arg, message",
    [
        ("resnet32x4_resnet9,kd", "expected '<pair>,<method>'"),
        ("resnet32x4_resnet8x4,kdd", "unknown method 'kdd'"),
        ("resnet32x4_resnet8x4,kd+kd", "the only suffix is '\\+kd'"),
        ("resnet33", "expected a CIFAR model"),
    ],
)
def test_cifar100_bad_arguments(arg, message):
    with pytest.raises(ValueError, match=message):
        _cifar(arg)


def test_imagenet_kd_recipe():
    c = load_config_file(f"{IMAGENET}:kd")
    assert (c.data.name, c.data.eval_split, c.data.batch_size) == (
        "imagenet2012",
        "validation",
        256,
    )
    assert (c.student.model, c.teacher.model) == ("resnet18", "resnet34")
    assert (c.optimizer.lr, c.optimizer.momentum, c.optimizer.weight_decay) == (0.1, 0.9, 1e-4)
    assert list(c.optimizer.decay_epochs) == [30, 60, 90] and c.num_epochs == 100
    assert c.objective.task_weight == 0.5
    (kd,) = c.objective.terms.values()
    assert (kd.loss, kd.weight, kd.hparams.temperature) == ("kd", 0.5, 1.0)
    teacher = load_config_file(f"{IMAGENET}:resnet34")
    assert teacher.student.model == "resnet34" and teacher.teacher.model == ""
    assert teacher.num_epochs == 90 and list(teacher.optimizer.decay_epochs) == [30, 60]
    assert load_config_file(str(IMAGENET)).name == c.name
