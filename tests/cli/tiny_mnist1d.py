"""A tiny MNIST-1D experiment for the CLI tests: seconds on a CPU.

`get_config("teacher")` trains the small CNN from labels; `get_config("kd")` distils it into
the small MLP (set `--config.teacher.checkpoint` to the teacher's workdir).
"""

from jaxkd.experiment.config import add_terms, base_config, finalize, term


def get_config(arg: str = "teacher"):
    c = base_config()
    c.name = f"tiny-mnist1d-{arg}"
    c.data.name = "mnist1d"
    c.data.train_split = "train[:512]"
    c.data.eval_split = "test[:256]"
    c.data.batch_size = 128
    c.data.eval_batch_size = 256
    c.optimizer.name = "adamw"
    c.optimizer.lr = 3e-3
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.num_epochs = 2
    c.log_every_steps = 2
    if arg == "teacher":
        c.student.model = "mnist1d_cnn_small"
    elif arg == "kd":
        c.student.model = "mnist1d_mlp_small"
        c.teacher.model = "mnist1d_cnn_small"
        c.objective.task_weight = 0.5
        add_terms(c, term("kd", "kd", weight=0.5, hparams={"temperature": 2.0}))
    else:
        raise ValueError(f"tiny_mnist1d config {arg!r}: expected 'teacher' or 'kd'.")
    return finalize(c)
