r"""MNIST-1D student baseline: a student trained from the 4,000 labels alone, no teacher.

  jaxkd train --config experiments/configs/mnist1d_scratch.py:mnist1d_mlp \
      --workdir runs/mnist1d/mnist1d_mlp/scratch
"""

from jaxkd.experiment import mnist1d


def get_config(arg: str = "mnist1d_mlp"):
    """The from-labels recipe for student `arg` (a name of `mnist1d.STUDENTS`)."""
    return mnist1d.parse_recipe(f"scratch,labels,{arg or 'mnist1d_mlp'}", family="baseline")
