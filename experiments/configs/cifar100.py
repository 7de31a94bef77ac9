r"""CIFAR-100 recipes of RepDistiller (CRD, Tian et al. 2020) and mdistiller (DKD, Zhao 2022).

One file for every teacher/student pair and method; the argument after the colon picks them:

  # a run from labels alone (a teacher, or a student's baseline):
  jaxkd train --config experiments/configs/cifar100.py:resnet32x4 --workdir runs/cifar100/resnet32x4
  # distillation: "<pair>,<method>", the teacher read from runs/cifar100/<teacher>:
  jaxkd train --config experiments/configs/cifar100.py:resnet32x4_resnet8x4,kd \
      --workdir runs/cifar100/resnet32x4_resnet8x4/kd

Every run: 240 epochs, batch 64, SGD (momentum 0.9) at lr 0.05 (0.01 for MobileNetV2 and
ShuffleNet students, as both references set), ×0.1 at epochs 150, 180 and 210, weight decay
5e-4. Loss weights are RepDistiller's `scripts/run_cifar_distill.sh` (`-r` cross-entropy,
`-a` KD, `-b` the method), DKD's are mdistiller's `configs/cifar100/dkd/*.yaml`; see
docs/experiments.md for the table and the published accuracies.
"""

from jaxkd.experiment.config import add_terms, base_config, finalize, term

# pair -> (teacher, student, DKD β of mdistiller's config for that pair).
PAIRS = {
    "resnet56_resnet20": ("resnet56", "resnet20", 2.0),
    "resnet110_resnet32": ("resnet110", "resnet32", 2.0),
    "resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4", 8.0),
    "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2", 6.0),
    "wrn_40_2_wrn_40_1": ("wrn_40_2", "wrn_40_1", 6.0),
    "vgg13_vgg8": ("vgg13", "vgg8", 6.0),
    "resnet32x4_shufflenetv1": ("resnet32x4", "shufflenetv1", 8.0),
    "resnet32x4_shufflenetv2": ("resnet32x4", "shufflenetv2", 8.0),
    "wrn_40_2_shufflenetv1": ("wrn_40_2", "shufflenetv1", 8.0),
    "vgg13_mobilenetv2": ("vgg13", "mobilenetv2", 6.0),
    "resnet50_mobilenetv2": ("resnet50_cifar", "mobilenetv2", 8.0),
}

# RepDistiller's `feat[1:-1]` (every stage) per model; `feat[-2]` is the last of them.
STAGES = {
    **dict.fromkeys(
        ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"], 3
    ),
    **dict.fromkeys(["resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1"], 3),
    **dict.fromkeys(["wrn_40_2", "shufflenetv1", "shufflenetv2"], 3),
    **dict.fromkeys(["vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "mobilenetv2"], 4),
    **dict.fromkeys(["resnet18_cifar", "resnet50_cifar"], 4),
}

# Both references lower the learning rate for these students (train_student.py, mdistiller).
LOW_LR_MODELS = ("mobilenetv2", "shufflenetv1", "shufflenetv2")

METHODS = ("kd", "dkd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "nst", "crd")
KD_TEMPERATURE = 4.0
DKD_WARMUP = 20.0  # epochs
EMBED = {"feat_dim": 128}  # RepDistiller's --feat_dim of the CRD and CC embedding heads.


def _per_stage(method, loss, weight, stages, **kwargs):
    """One term per stage: RepDistiller sums these losses over `feat[1:-1]` before weighting."""
    return [
        term(
            f"{method}_stage{i}",
            loss,
            weight=weight,
            student=f"stage{i}",
            teacher=f"stage{i}",
            **kwargs,
        )
        for i in range(1, stages + 1)
    ]


def _pooled(name, loss, weight, **kwargs):
    """A term on the pre-logit embeddings (RepDistiller's `feat[-1]`)."""
    return term(name, loss, weight=weight, student="pooled", teacher="pooled", **kwargs)


def _method(base, teacher, student, dkd_beta):
    stages = min(STAGES[teacher], STAGES[student])
    last = f"stage{stages}"
    if base == "kd":
        return [term("kd", "kd", weight=0.9, hparams={"temperature": KD_TEMPERATURE})]
    if base == "dkd":
        dkd = {"alpha": 1.0, "beta": dkd_beta, "temperature": KD_TEMPERATURE}
        return [term("dkd", "dkd", inputs=("label",), hparams=dkd, warmup_epochs=DKD_WARMUP)]
    if base == "fitnet":  # RepDistiller's --hint_layer 2, through its ConvReg regressor.
        return [
            term("fitnet", "hint", weight=100.0, student="stage2", teacher="stage2", adapter="hint")
        ]
    if base == "at":
        return _per_stage("at", "attention_transfer", 1000.0, stages)
    if base == "sp":
        return [term("sp", "similarity_preserving", weight=3000.0, student=last, teacher=last)]
    if base == "cc":  # 128-d heads on both sides (RepDistiller's LinearEmbed: no L2 norm).
        return [
            _pooled(
                "cc",
                "correlation_congruence",
                0.02,
                adapter="embed",
                teacher_adapter="embed",
                adapter_kwargs=EMBED,
            )
        ]
    if base == "vid":
        return _per_stage("vid", "vid", 1.0, stages, adapter="vid")
    if base == "rkd":  # RKDLoss(w_d=25, w_a=50), itself weighted by -b 1.
        return [
            _pooled("rkd_distance", "rkd_distance", 25.0),
            _pooled("rkd_angle", "rkd_angle", 50.0),
        ]
    if base == "pkt":
        return [_pooled("pkt", "pkt", 30000.0)]
    if base == "nst":
        return _per_stage("nst", "nst", 50.0, stages)
    if base == "crd":  # Embed heads (linear + L2 norm, 128-d) on both sides; NCE k = 16384.
        crd = {"num_negatives": 16384, "nce_t": 0.07, "momentum": 0.5}
        return [
            _pooled(
                "crd",
                "crd",
                0.8,
                inputs=("index",),
                adapter="embed",
                teacher_adapter="embed",
                adapter_kwargs=EMBED,
                hparams=crd,
            )
        ]
    raise ValueError(
        f"unknown method {base!r}; expected one of {', '.join(METHODS)}, or a feature method "
        "with '+kd' (e.g. 'crd+kd')."
    )


def method_terms(method, teacher, student, dkd_beta):
    """(cross-entropy weight, objective terms) of `method` for this teacher and student.

    Weights follow RepDistiller's scripts/run_cifar_distill.sh: KD is `-r 0.1 -a 0.9`; every
    other method is `-r 1 -a 0 -b <weight>` (no KD term) unless suffixed "+kd" (`-a 1`, its
    CRD+KD run). DKD follows mdistiller: CE 1, DKD α = 1, β per pair, T = 4, its weight
    ramped up over the first 20 epochs.
    """
    base, plus, extra = method.partition("+")
    if plus and (extra != "kd" or base in ("kd", "dkd")):
        raise ValueError(
            f"method {method!r}: the only suffix is '+kd', for a feature method (e.g. 'crd+kd')."
        )
    terms = _method(base, teacher, student, dkd_beta)
    if extra:
        terms.append(term("kd", "kd", weight=1.0, hparams={"temperature": KD_TEMPERATURE}))
    return (0.1 if base == "kd" else 1.0), terms


def _cifar100(name, model):
    c = base_config()
    c.name = name
    c.data.name = "cifar100"
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.batch_size = 64
    c.data.eval_batch_size = 256
    c.data.augment = True  # pad 4 + random 32x32 crop + horizontal flip, as both references.
    c.student.model = model
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.01 if model in LOW_LR_MODELS else 0.05
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule = "piecewise"
    c.optimizer.decay_epochs = [150, 180, 210]
    c.optimizer.decay_factor = 0.1
    c.num_epochs = 240
    return c


def get_config(arg: str = "resnet32x4_resnet8x4,kd"):
    """The CIFAR-100 recipe named by `arg`: "<model>" (from labels) or "<pair>,<method>"."""
    parts = [p.strip() for p in str(arg).split(",")]
    if len(parts) == 1:
        (model,) = parts
        if model not in STAGES:
            raise ValueError(
                f"cifar100 config {arg!r}: expected a CIFAR model ({', '.join(STAGES)}) for a "
                f"run from labels, or '<pair>,<method>' with a pair in {', '.join(PAIRS)}."
            )
        return finalize(_cifar100(f"cifar100-{model}", model))
    if len(parts) != 2 or parts[0] not in PAIRS:
        raise ValueError(
            f"cifar100 config {arg!r}: expected '<pair>,<method>' with a pair in "
            f"{', '.join(PAIRS)} and a method in {', '.join(METHODS)}."
        )
    pair, method = parts
    teacher, student, dkd_beta = PAIRS[pair]
    task_weight, terms = method_terms(method, teacher, student, dkd_beta)
    c = _cifar100(f"cifar100-{pair}-{method}", student)
    c.teacher.model = teacher
    # The teacher run of `cifar100.py:<teacher>`, trained with --workdir runs/cifar100/<teacher>.
    c.teacher.checkpoint = f"runs/cifar100/{teacher}"
    c.objective.task_weight = task_weight
    add_terms(c, *terms)
    return finalize(c)
