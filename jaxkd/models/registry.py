"""Reference models by name: `create_model`, `list_models`, `get_spec`."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable

from flax import nnx

from jaxkd.models import (
    cifar_resnet,
    imagenet_resnet,
    mnist1d,
    mobilenetv2,
    shufflenet,
    transformer,
    vgg,
    wrn,
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model.

    Attributes:
        name: registry name.
        build: `build(*, num_classes, rngs, **kwargs) -> nnx.Module`.
        input_shape: the shape of one example the model is designed for (no batch axis).
        published_params: the published parameter count for a `reference_classes`-way
            classifier: an exact int (torchvision), a float rounded to the printed digits
            (CRD tables: millions with two decimals), or None where none is published.
        reference_classes: the number of classes `published_params` assumes.
        source: where the architecture and the published count come from.
    """

    name: str
    build: Callable[..., nnx.Module]
    input_shape: tuple[int, ...]
    published_params: int | float | None
    reference_classes: int
    source: str


_MNIST1D = (40,)
_CIFAR = (32, 32, 3)
_IMAGENET = (224, 224, 3)
_GREYDANUS = "Greydanus 2020, MNIST-1D reference models"
_CRD = "Tian et al. 2020 (CRD/RepDistiller), Tab. 1-2"
_REPDISTILLER = "RepDistiller/mdistiller model zoo (no published count)"
_TORCHVISION = "torchvision (He et al. 2016)"
_DECODER = "jaxkd (Llama/Qwen-style decoder)"

_SPECS = (
    ModelSpec("mnist1d_mlp", mnist1d.mnist1d_mlp, _MNIST1D, None, 10, _GREYDANUS),
    ModelSpec("mnist1d_cnn", mnist1d.mnist1d_cnn, _MNIST1D, None, 10, _GREYDANUS),
    ModelSpec("mnist1d_mlp_small", mnist1d.mnist1d_mlp_small, _MNIST1D, None, 10, "jaxkd"),
    ModelSpec("mnist1d_cnn_small", mnist1d.mnist1d_cnn_small, _MNIST1D, None, 10, "jaxkd"),
    ModelSpec("resnet8", cifar_resnet.resnet8, _CIFAR, None, 100, _REPDISTILLER),
    ModelSpec("resnet14", cifar_resnet.resnet14, _CIFAR, None, 100, _REPDISTILLER),
    ModelSpec("resnet20", cifar_resnet.resnet20, _CIFAR, 0.28e6, 100, _CRD),
    ModelSpec("resnet32", cifar_resnet.resnet32, _CIFAR, 0.47e6, 100, _CRD),
    ModelSpec("resnet44", cifar_resnet.resnet44, _CIFAR, None, 100, _REPDISTILLER),
    ModelSpec("resnet56", cifar_resnet.resnet56, _CIFAR, 0.86e6, 100, _CRD),
    ModelSpec("resnet110", cifar_resnet.resnet110, _CIFAR, 1.74e6, 100, _CRD),
    ModelSpec("resnet8x4", cifar_resnet.resnet8x4, _CIFAR, 1.23e6, 100, _CRD),
    ModelSpec("resnet32x4", cifar_resnet.resnet32x4, _CIFAR, 7.43e6, 100, _CRD),
    ModelSpec("wrn_16_1", wrn.wrn_16_1, _CIFAR, None, 100, _REPDISTILLER),
    ModelSpec("wrn_16_2", wrn.wrn_16_2, _CIFAR, 0.70e6, 100, _CRD),
    ModelSpec("wrn_40_1", wrn.wrn_40_1, _CIFAR, None, 100, _REPDISTILLER),
    ModelSpec("wrn_40_2", wrn.wrn_40_2, _CIFAR, 2.26e6, 100, _CRD),
    ModelSpec("vgg8", vgg.vgg8, _CIFAR, 3.96e6, 100, _CRD),
    ModelSpec("vgg11", vgg.vgg11, _CIFAR, None, 100, _REPDISTILLER),
    ModelSpec("vgg13", vgg.vgg13, _CIFAR, 9.46e6, 100, _CRD),
    ModelSpec("vgg16", vgg.vgg16, _CIFAR, None, 100, _REPDISTILLER),
    ModelSpec("vgg19", vgg.vgg19, _CIFAR, None, 100, _REPDISTILLER),
    ModelSpec("mobilenetv2", mobilenetv2.mobilenetv2, _CIFAR, 0.81e6, 100, _CRD),
    ModelSpec("shufflenetv1", shufflenet.shufflenetv1, _CIFAR, 0.95e6, 100, _CRD),
    ModelSpec("shufflenetv2", shufflenet.shufflenetv2, _CIFAR, 1.36e6, 100, _CRD),
    ModelSpec("resnet18_cifar", imagenet_resnet.resnet18_cifar, _CIFAR, None, 100, _REPDISTILLER),
    ModelSpec("resnet50_cifar", imagenet_resnet.resnet50_cifar, _CIFAR, 23.71e6, 100, _CRD),
    ModelSpec("resnet18", imagenet_resnet.resnet18, _IMAGENET, 11_689_512, 1000, _TORCHVISION),
    ModelSpec("resnet34", imagenet_resnet.resnet34, _IMAGENET, 21_797_672, 1000, _TORCHVISION),
    ModelSpec("resnet50", imagenet_resnet.resnet50, _IMAGENET, 25_557_032, 1000, _TORCHVISION),
    # Int token ids [B, L]; num_classes is the vocabulary size (259 = byte tokenizer).
    ModelSpec(
        "transformer_lm",
        transformer.transformer_lm,
        (512,),
        None,
        259,
        "jaxkd (Llama/Qwen-style decoder)",
    ),
)
_REGISTRY = {spec.name: spec for spec in _SPECS}


def list_models() -> list[str]:
    """Names accepted by `create_model`, in registry order (MNIST-1D, CIFAR, ImageNet)."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The `ModelSpec` of a registered model.

    Args:
        name: a name from `list_models()`.

    Returns:
        The model's spec (builder, input shape, published parameter count).

    Raises:
        ValueError: if `name` is not registered; the message lists the valid names.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown model {name!r}. Valid names: {', '.join(list_models())}."
        ) from None


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """Builds a reference model by name.

    `model(x)` returns logits `[B, num_classes]`; `forward_with_features(model, x)` (or
    `nnx.capture(model, nnx.Intermediate)(x)`) also returns the named features listed in
    `model.feature_names`. Models start in training mode; `model.eval()` switches
    BatchNorm to running averages (and Dropout off).

    Args:
        name: a name from `list_models()`, e.g. "resnet32x4", "wrn_40_2", "mnist1d_cnn".
        num_classes: width of the classifier.
        rngs: the `nnx.Rngs` that initialise the parameters ("params" stream; WRN with
            `dropout_rate > 0` also draws from "dropout").
        **kwargs: passed to the model's constructor (e.g. `dtype=jnp.bfloat16`, or
            `hidden=(64,)` for "mnist1d_mlp").

    Returns:
        The model, an `nnx.Module`.

    Raises:
        ValueError: for an unknown `name` (listing the valid names) or a `num_classes`
            below 1.
        TypeError: for a `num_classes` that is not an integer.

    References:
        Tian et al. 2020, "Contrastive Representation Distillation" (RepDistiller zoo).
    """
    spec = get_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"`num_classes` must be an int, got {num_classes!r}.")
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
    return spec.build(num_classes=int(num_classes), rngs=rngs, **kwargs)
