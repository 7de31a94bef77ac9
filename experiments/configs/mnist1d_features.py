r"""MNIST-1D, feature distillation: hint (FitNets on the pre-logit embedding).

The argument is "<method>[,<data>][,<student>]", data "labels" or "transfer" (default):

  jaxkd train --config experiments/configs/mnist1d_features.py:hint+kd,transfer \
      --workdir runs/mnist1d/mnist1d_mlp/hint+kd_transfer

The teacher is read from runs/mnist1d/teacher (experiments/configs/mnist1d_teacher.py);
docs/demo.md lists the recipes and their results.
"""

from jaxkd.experiment import mnist1d


def get_config(arg: str = "hint+kd,transfer"):
    """The feature-family recipe named by `arg`."""
    return mnist1d.parse_recipe(arg, family="feature")
