r"""MNIST-1D teacher: the paper's CNN on the 4,000 labelled signals (94 % test).

  jaxkd train --config experiments/configs/mnist1d_teacher.py --workdir runs/mnist1d/teacher

The argument picks another model trained with the same recipe, e.g. `:mnist1d_cnn_small`.
The students' configs read their teacher from `runs/mnist1d/teacher`
(`--config.teacher.checkpoint=DIR` to change it).
"""

from jaxkd.experiment import mnist1d


def get_config(arg: str = mnist1d.TEACHER):
    """The teacher recipe for model `arg`."""
    return mnist1d.teacher_config(model=arg or mnist1d.TEACHER)
