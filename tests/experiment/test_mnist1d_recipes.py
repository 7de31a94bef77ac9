"""The MNIST-1D recipes: every method builds an objective that trains, on real model outputs."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.cli_config import load_config_file
from jaxkd.experiment import mnist1d, objective_builder
from jaxkd.experiment.models import build_model

CONFIGS = pathlib.Path(__file__).parents[2] / "experiments" / "configs"
FAMILY_FILES = {
    "logit": "mnist1d_logits.py",
    "feature": "mnist1d_features.py",
    "relation": "mnist1d_relations.py",
    "contrastive": "mnist1d_contrastive.py",
}
BATCH = 8


def _outputs(name, rng):
    """Random arrays shaped like the model's outputs (logits and every named feature)."""
    model = build_model(name, {}, num_classes=10, abstract=True)
    x = jax.ShapeDtypeStruct((BATCH, 40), jnp.float32)
    apply = lambda p, s, x: model.apply(p, s, x, train=False)[0]
    shapes = jax.eval_shape(apply, model.params, model.state, x)
    # Post-ReLU features are non-negative, as the models' are.
    return jax.tree.map(lambda a: jnp.abs(jnp.asarray(rng.normal(size=a.shape), a.dtype)), shapes)


@pytest.fixture(scope="module")
def outputs():
    rng = np.random.default_rng(0)
    return {
        name: _outputs(name, rng) for name in ("mnist1d_cnn", "mnist1d_mlp", "mnist1d_cnn_small")
    }


def _recipes():
    for method in mnist1d.METHODS:
        for data in mnist1d.DATA:
            if data == "transfer" and method in mnist1d.LABELS_ONLY:
                continue
            # Logit methods see [B, 10] whatever the student; features differ per model.
            students = ("mnist1d_mlp",)
            if method not in (*mnist1d.FAMILIES["baseline"], *mnist1d.FAMILIES["logit"]):
                students += ("mnist1d_cnn_small",)
            for student in students:
                yield method, data, student


@pytest.mark.parametrize("method, data, student", list(_recipes()))
def test_every_recipe_gives_a_finite_loss_and_gradient(method, data, student, outputs):
    c = mnist1d.student_config(method, data=data, student=student)
    teacher = None if method == "scratch" else outputs[c.teacher.model]
    objective = objective_builder.build_objective(
        c,
        student_outputs=outputs[student],
        teacher_outputs=teacher,
        steps_per_epoch=10,
        num_data=64,
    )
    assert [t.name for t in objective.terms] == ["task", *c.objective.terms]
    labels = np.arange(BATCH) % 10
    if data == "transfer":
        labels[BATCH // 2 :] = -1  # unlabelled signals of the transfer set
    batch = {
        "label": jnp.asarray(labels, jnp.int32),
        "mask": jnp.ones(BATCH),
        "index": jnp.arange(BATCH, dtype=jnp.int32),
    }

    def loss(adapter_params, logits):
        student_out = outputs[student].replace(logits=logits)
        value, _ = objective.apply(
            student_out,
            teacher,
            batch,
            jnp.asarray(100),
            adapter_params=adapter_params,
            rng=jax.random.key(0),
        )
        return value

    params = objective.init_adapter_params()
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
        params, outputs[student].logits
    )
    assert np.isfinite(float(value)) and float(value) > 0
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads[1]).sum()) > 0


def test_demo_recipes():
    teacher = mnist1d.teacher_config()
    assert teacher.student.model == "mnist1d_cnn" and teacher.teacher.model == ""
    assert (teacher.data.name, teacher.data.in_memory, teacher.num_epochs) == ("mnist1d", True, 80)
    assert (teacher.optimizer.name, teacher.optimizer.lr) == ("adamw", 1e-2)
    assert list(teacher.optimizer.decay_epochs) == [64]
    assert teacher.checkpoint.every_epochs == teacher.num_epochs  # one save, at the end
    kd = mnist1d.student_config("kd", data="transfer", teacher_checkpoint="runs/t")
    assert (kd.data.name, kd.data.unlabeled_split) == ("mnist1d/transfer", "unlabeled")
    assert kd.objective.task_weight == 0.0
    assert kd.objective.terms.kd.hparams.to_dict() == {"temperature": mnist1d.KD_TEMPERATURE}
    assert (kd.teacher.model, kd.teacher.checkpoint) == ("mnist1d_cnn", "runs/t")
    assert kd.log_every_steps == 54_000 // 256  # one train log per epoch
    scratch = mnist1d.student_config("scratch", data="labels")
    assert scratch.teacher.model == "" and not scratch.objective.terms
    assert scratch.objective.task_weight == 1.0
    short = mnist1d.teacher_config(epochs=5)
    assert (short.num_epochs, list(short.optimizer.decay_epochs)) == (5, [4])


def test_config_files():
    assert load_config_file(f"{CONFIGS / 'mnist1d_teacher.py'}").student.model == "mnist1d_cnn"
    small = load_config_file(f"{CONFIGS / 'mnist1d_scratch.py'}:mnist1d_cnn_small")
    assert small.student.model == "mnist1d_cnn_small" and small.teacher.model == ""
    for family, name in FAMILY_FILES.items():
        for method in mnist1d.FAMILIES[family]:
            data = "labels" if method in mnist1d.LABELS_ONLY else "transfer"
            c = load_config_file(f"{CONFIGS / name}:{method},{data}")
            assert c.name == f"mnist1d-mnist1d_mlp-{method}-{data}"
    c = load_config_file(f"{CONFIGS / 'mnist1d_relations.py'}:pkt+kd,transfer,mnist1d_cnn_small")
    assert sorted(c.objective.terms) == ["kd", "pkt"]
    assert c.student.model == "mnist1d_cnn_small"


@pytest.mark.parametrize(
    "file, arg, message",
    [
        ("mnist1d_logits.py", "hint,transfer", "expected '<method>"),
        ("mnist1d_logits.py", "kd,unlabeled", "`data` must be one of"),
        ("mnist1d_logits.py", "kd,transfer,resnet8", "`student` must be one of"),
        ("mnist1d_logits.py", "dkd,transfer", "cannot train on the unlabelled transfer set"),
        ("mnist1d_logits.py", "kd+kd", "plus_kd adds KD to a feature or relation method"),
        ("mnist1d_relations.py", "pkt+dkd", "expected '<method>"),
        ("mnist1d_contrastive.py", "crd,transfer", "cannot train on the unlabelled"),
    ],
)
def test_bad_recipe_names(file, arg, message):
    with pytest.raises(ValueError, match=message):
        load_config_file(f"{CONFIGS / file}:{arg}")
