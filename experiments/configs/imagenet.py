r"""ImageNet (ILSVRC 2012): ResNet-34 → ResNet-18 KD, torchdistill's reference recipe.

  jaxkd train --config experiments/configs/imagenet.py:resnet34 --workdir runs/imagenet/resnet34
  jaxkd train --config experiments/configs/imagenet.py:kd --workdir runs/imagenet/resnet18_kd

"kd" is torchdistill's configs/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/
kd-resnet18_from_resnet34.yaml: 100 epochs, batch 256, SGD lr 0.1 (momentum 0.9) ×0.1 at
epochs 30/60/90, weight decay 1e-4, `KDLoss(temperature=1, alpha=0.5)`, i.e.
0.5·CE + 0.5·T²·KL. torchdistill's teacher is torchvision's pretrained ResNet-34; here
"resnet34" (and "resnet18", the student's baseline) train from labels with torchvision's
reference recipe (90 epochs, lr 0.1 ×0.1 every 30 epochs, weight decay 1e-4, batch 256).
"""

from jaxkd.experiment.config import add_terms, base_config, finalize, term

RUNS = ("kd", "resnet34", "resnet18")


def _imagenet(name, model):
    c = base_config()
    c.name = name
    c.data.name = "imagenet2012"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.batch_size = 256
    c.data.eval_batch_size = 256
    c.data.augment = True  # random-resized crop 224 + flip; eval: resize 256, center crop 224.
    c.student.model = model
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "piecewise"
    c.optimizer.decay_factor = 0.1
    c.log_every_steps = 500
    return c


def get_config(arg: str = "kd"):
    """ImageNet run `arg`: "kd" (ResNet-34 → ResNet-18), or "resnet34"/"resnet18" from labels."""
    if arg not in RUNS:
        raise ValueError(f"imagenet config {arg!r}: expected one of {', '.join(RUNS)}.")
    if arg != "kd":
        c = _imagenet(f"imagenet-{arg}", arg)
        c.num_epochs = 90
        c.optimizer.decay_epochs = [30, 60]
        return finalize(c)
    c = _imagenet("imagenet-resnet34_resnet18-kd", "resnet18")
    c.num_epochs = 100
    c.optimizer.decay_epochs = [30, 60, 90]
    c.teacher.model = "resnet34"
    c.teacher.checkpoint = "runs/imagenet/resnet34"
    c.objective.task_weight = 0.5
    add_terms(c, term("kd", "kd", weight=0.5, hparams={"temperature": 1.0}))
    return finalize(c)
