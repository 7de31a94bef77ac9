"""Reference models (Flax NNX) that expose named intermediate features.

`create_model(name, num_classes=..., rngs=...)` builds any model in `list_models()`;
`forward_with_features(model, x)` returns its logits and features (see docs/models.md).
"""

from jaxkd.models._conv_grad import swapped_kernel_gradients as swapped_kernel_gradients
from jaxkd.models.attention import KVCache as KVCache
from jaxkd.models.cifar_resnet import CifarResNet as CifarResNet
from jaxkd.models.core import FeatureModel as FeatureModel
from jaxkd.models.core import count_params as count_params
from jaxkd.models.core import forward_with_features as forward_with_features
from jaxkd.models.imagenet_resnet import ResNet as ResNet
from jaxkd.models.mnist1d import MLP as MLP
from jaxkd.models.mnist1d import ConvNet1D as ConvNet1D
from jaxkd.models.mobilenetv2 import MobileNetV2 as MobileNetV2
from jaxkd.models.registry import ModelSpec as ModelSpec
from jaxkd.models.registry import create_model as create_model
from jaxkd.models.registry import get_spec as get_spec
from jaxkd.models.registry import list_models as list_models
from jaxkd.models.shufflenet import ShuffleNetV1 as ShuffleNetV1
from jaxkd.models.shufflenet import ShuffleNetV2 as ShuffleNetV2
from jaxkd.models.transformer import Transformer as Transformer
from jaxkd.models.transformer import TransformerConfig as TransformerConfig
from jaxkd.models.vgg import VGG as VGG
from jaxkd.models.wrn import WideResNet as WideResNet
