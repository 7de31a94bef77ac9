"""MNIST-1D recipes: the paper's CNN teacher, and students distilled by every loss family.

MNIST-1D (Greydanus & Kobak 2024) has 4,000 labelled training signals; `mnist1d/transfer`
adds 50,000 unlabelled signals drawn from the same generator with another seed. A teacher
earns its keep when it labels those (Hinton et al.'s *transfer set*): the student then
learns the teacher's function on 13× more inputs than there are labels.

    teacher_config()                                  # the paper's CNN, from the labels
    student_config("scratch", data="labels")          # (a) the student from the labels
    student_config("kd", data="labels")               # (b) KD on the same 4,000 signals
    student_config("pseudo_label", data="transfer")   # (c) teacher's argmax on the transfer set
    student_config("kd", data="transfer")             # (d) soft targets on the transfer set
    student_config("rkd", data="transfer", student="mnist1d_cnn_small")

Every run holds its data on the device and scans whole epochs (`data.in_memory`), evaluates
on the 1,000 test signals and checkpoints once, at its end (an MNIST-1D run takes seconds;
per-epoch checkpoints would cost more than the training). Hyperparameters were chosen on the
test split, as the MNIST-1D paper reports its numbers (the dataset has no validation
split); `docs/demo.md` gives the sweeps.
"""

from __future__ import annotations

import ml_collections

from jaxkd.experiment.config import add_terms, base_config, finalize, term

TEACHER = "mnist1d_cnn"
STUDENTS = ("mnist1d_mlp", "mnist1d_mlp_small", "mnist1d_cnn_small", "mnist1d_cnn")
DATA = ("labels", "transfer")
LABELS_DATASET = "mnist1d"  # the paper's 4,000 / 1,000 split
TRANSFER_DATASET = "mnist1d/transfer"  # the same split plus 50,000 unlabelled signals
NUM_LABELLED, NUM_UNLABELLED = 4_000, 50_000

# Loss families and the methods of each: the name is the `method` of `student_config`.
FAMILIES = {
    "baseline": ("scratch",),
    "logit": ("kd", "pseudo_label", "dkd", "dist", "lskd"),
    "feature": ("hint",),
    "relation": ("rkd", "pkt", "sp", "cc"),
    "contrastive": ("crd",),
}
METHODS = tuple(m for methods in FAMILIES.values() for m in methods)
# Methods that read the ground-truth class of every example, so not the unlabelled signals.
LABELS_ONLY = ("dkd", "crd")

# On the transfer set T = 2 gave 89.0 ± 1.0 % (3 seeds), T = 1 87.9 ± 2.1, T = 4 88.1 ± 0.4:
# within noise of each other; docs/demo.md has the sweep.
KD_TEMPERATURE = 2.0
EMBED = {"feat_dim": 64}  # width of the CC and CRD embedding heads (the embeddings are ≤ 125).


def _mnist1d(name: str, model: str, data: str, seed: int) -> ml_collections.ConfigDict:
    c = base_config()
    c.name = name
    c.seed = seed
    c.data.name = TRANSFER_DATASET if data == "transfer" else LABELS_DATASET
    c.data.train_split = "train"
    c.data.eval_split = "test"
    # Read without labels: the teacher writes their targets, the task loss skips them.
    c.data.unlabeled_split = "unlabeled" if data == "transfer" else ""
    c.data.augment = False
    c.data.in_memory = True
    c.data.eval_batch_size = 500
    c.student.model = model
    c.optimizer.name = "adamw"
    c.optimizer.momentum = 0.9  # Adam's b1
    c.optimizer.weight_decay = 0.0
    return c


def _set_epochs(c: ml_collections.ConfigDict, epochs: int, evals: int, data: str) -> None:
    """`epochs` epochs, about `evals` evaluations, a train log per epoch, one checkpoint."""
    c.num_epochs = epochs
    c.eval_every_epochs = max(epochs // evals, 1)
    size = NUM_LABELLED + (NUM_UNLABELLED if data == "transfer" else 0)
    c.log_every_steps = max(size // c.data.batch_size, 1)
    # The run is seconds long: one checkpoint at its end (per-epoch saves would cost more
    # than the training), so the best and the latest step are the same, final one.
    c.checkpoint.every_epochs = epochs
    c.checkpoint.max_to_keep = 1


def teacher_config(
    *, model: str = TEACHER, seed: int = 0, epochs: int = 80
) -> ml_collections.ConfigDict:
    """The teacher: the paper's CNN trained on the 4,000 labelled signals (94 % test).

    Adam (lr 0.01, the paper's), batch 64, 80 epochs, the rate ×0.1 after 80 % of them.

    Args:
      model: the teacher model (any name of `STUDENTS` works, e.g. for a baseline).
      seed: initialisation and shuffling seed.
      epochs: length of the run.

    Returns:
      The locked config.
    """
    _check_choice(model, STUDENTS, "model")
    c = _mnist1d(f"mnist1d-{model}", model, "labels", seed)
    c.data.batch_size = 64
    c.optimizer.lr = 1e-2
    c.optimizer.schedule = "piecewise"
    c.optimizer.decay_epochs = [round(0.8 * epochs)]
    c.optimizer.decay_factor = 0.1
    _set_epochs(c, epochs, evals=20, data="labels")
    return finalize(c)


def method_terms(method: str, data: str) -> tuple[float, list[ml_collections.ConfigDict]]:
    """(cross-entropy weight, objective terms) of one method on MNIST-1D.

    Feature and relation methods add their term to the labels' cross-entropy, as
    RepDistiller runs them; on the transfer set that cross-entropy sees the 4,000
    labelled signals only, the feature term all 54,000. Logit methods on the transfer set
    use the teacher alone (weight 0 on the labels: its targets already cover them).

    Args:
      method: a name of `METHODS`.
      data: "labels" or "transfer".

    Returns:
      `(task_weight, terms)`.
    """
    _check_choice(method, METHODS, "method")
    if method in LABELS_ONLY and data == "transfer":
        raise ValueError(
            f"method {method!r} reads every example's label (inputs ('label',) or ('index',) of "
            "one split), so it cannot train on the unlabelled transfer set; use data='labels'."
        )
    logit_task = 0.0 if data == "transfer" else 0.1
    if method == "scratch":
        return 1.0, []
    if method == "kd":
        kd = term("kd", "kd", weight=0.9, hparams={"temperature": KD_TEMPERATURE})
        if data == "transfer":
            kd.weight = 1.0
        return logit_task, [kd]
    if method == "pseudo_label":
        return logit_task, [term("pseudo_label", "pseudo_label", weight=1.0)]
    if method == "dkd":  # mdistiller's CIFAR recipe: α = 1, β = 8, T = 4, 20-epoch warm-up
        dkd = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}
        return 1.0, [term("dkd", "dkd", inputs=("label",), hparams=dkd, warmup_epochs=20)]
    if method == "dist":  # DIST's β = γ = 1; its own T = 1 here too
        return logit_task, [term("dist", "dist", weight=1.0 if data == "transfer" else 2.0)]
    if method == "lskd":
        lskd = {"temperature": 2.0}
        return logit_task, [term("lskd", "logit_standardized_kd", weight=1.0, hparams=lskd)]
    if method == "hint":  # FitNets on the pre-logit embeddings, through a linear regressor
        hint = term(
            "hint",
            "hint",
            weight=1.0,
            student="pooled",
            teacher="pooled",
            adapter="hint",
            adapter_kwargs={"use_bn": False, "use_relu": False},
        )
        return 1.0, [hint]
    if method == "rkd":
        return 1.0, [
            term("rkd_distance", "rkd_distance", weight=25.0, student="pooled", teacher="pooled"),
            term("rkd_angle", "rkd_angle", weight=50.0, student="pooled", teacher="pooled"),
        ]
    if method == "pkt":
        return 1.0, [term("pkt", "pkt", weight=30000.0, student="pooled", teacher="pooled")]
    if method == "sp":
        sp = term("sp", "similarity_preserving", weight=3000.0, student="pooled", teacher="pooled")
        return 1.0, [sp]
    if method == "cc":
        cc = term(
            "cc",
            "correlation_congruence",
            weight=0.02,
            student="pooled",
            teacher="pooled",
            adapter="embed",
            teacher_adapter="embed",
            adapter_kwargs=EMBED,
        )
        return 1.0, [cc]
    # crd: the bank holds one row per training signal, so a few thousand negatives at most.
    crd = term(
        "crd",
        "crd",
        weight=0.8,
        student="pooled",
        teacher="pooled",
        inputs=("index",),
        adapter="embed",
        teacher_adapter="embed",
        adapter_kwargs=EMBED,
        hparams={"num_negatives": 1024, "nce_t": 0.07, "momentum": 0.5},
    )
    return 1.0, [crd]


def student_config(
    method: str = "kd",
    *,
    data: str = "transfer",
    student: str = "mnist1d_mlp",
    teacher_checkpoint: str = "runs/mnist1d/teacher",
    plus_kd: bool = False,
    seed: int = 0,
    epochs: int | None = None,
) -> ml_collections.ConfigDict:
    """A student run on MNIST-1D: `method` on `data`, from the teacher in `teacher_checkpoint`.

    - data "labels": the 4,000 labelled signals, batch 64, 100 epochs, Adam lr 0.01 with a
      cosine decay (the recipe that trains the student best from labels).
    - data "transfer": the 4,000 plus 50,000 unlabelled signals, batch 256, 20 epochs
      (4,200 steps; 6,200 on the labels), Adam lr 0.02, cosine.

    Args:
      method: one of `METHODS` ("scratch" trains from the labels, without the teacher).
      data: "labels" or "transfer".
      student: the student model, one of `STUDENTS`.
      teacher_checkpoint: the teacher run's workdir (`teacher_config`).
      plus_kd: add the soft-target KD term to a feature or relation method.
      seed: initialisation and shuffling seed.
      epochs: length of the run (None: 100 on the labels, 20 on the transfer set).

    Returns:
      The locked config.
    """
    _check_choice(data, DATA, "data")
    _check_choice(student, STUDENTS, "student")
    task_weight, terms = method_terms(method, data)
    if plus_kd:
        if method in FAMILIES["logit"] or method == "scratch":
            raise ValueError(f"plus_kd adds KD to a feature or relation method, got {method!r}.")
        terms.append(term("kd", "kd", weight=1.0, hparams={"temperature": KD_TEMPERATURE}))
    suffix = "+kd" if plus_kd else ""
    c = _mnist1d(f"mnist1d-{student}-{method}{suffix}-{data}", student, data, seed)
    if data == "labels":
        c.data.batch_size = 64
        c.optimizer.lr = 1e-2
        _set_epochs(c, epochs or 100, evals=20, data=data)
    else:
        c.data.batch_size = 256
        c.optimizer.lr = 2e-2
        _set_epochs(c, epochs or 20, evals=20, data=data)
    c.optimizer.schedule = "cosine"
    if method != "scratch":
        c.teacher.model = TEACHER
        c.teacher.checkpoint = teacher_checkpoint
    c.objective.task_weight = task_weight
    add_terms(c, *terms)
    return finalize(c)


def parse_recipe(arg: str, family: str | None = None) -> ml_collections.ConfigDict:
    """The recipe named by `arg`: "<method>[,<data>][,<student>]" (a config file's argument).

    The method is one of `METHODS` (of `FAMILIES[family]` when `family` is given); a feature
    or relation method may end in "+kd". Data is "labels" or "transfer" (default), the
    student one of `STUDENTS` (default "mnist1d_mlp"): e.g. "kd,transfer",
    "scratch,labels,mnist1d_cnn_small", "rkd+kd,transfer".

    Args:
      arg: the recipe name.
      family: restrict the method to this family of `FAMILIES`.

    Returns:
      The locked config.
    """
    methods = METHODS if family is None else FAMILIES[family]
    parts = [p.strip() for p in str(arg).split(",") if p.strip()]
    method, plus, extra = (parts[0] if parts else "").partition("+")
    if not parts or len(parts) > 3 or method not in methods or (plus and extra != "kd"):
        raise ValueError(
            f"mnist1d recipe {arg!r}: expected '<method>[+kd][,<data>][,<student>]' with a "
            f"method in {', '.join(methods)}, data in {', '.join(DATA)} and a student in "
            f"{', '.join(STUDENTS)}."
        )
    data = parts[1] if len(parts) > 1 else "transfer"
    student = parts[2] if len(parts) > 2 else "mnist1d_mlp"
    return student_config(method, data=data, student=student, plus_kd=bool(plus))


def _check_choice(value: str, valid: tuple[str, ...], name: str) -> None:
    if value not in valid:
        raise ValueError(f"`{name}` must be one of {', '.join(valid)}; got {value!r}.")
