"""Input data: TFDS data sources (array_record, no TensorFlow) read through Grain.

Importing this package registers the locally generated `mnist1d` TFDS builder.
"""

from jaxkd.data.mixup import Mixup as Mixup
from jaxkd.data.mnist1d_builder import Mnist1d as Mnist1d
from jaxkd.data.mnist1d_builder import Mnist1dConfig as Mnist1dConfig
from jaxkd.data.pipeline import Pipeline as Pipeline
from jaxkd.data.pipeline import Source as Source
from jaxkd.data.pipeline import eval_pipeline as eval_pipeline
from jaxkd.data.pipeline import load_arrays as load_arrays
from jaxkd.data.pipeline import train_pipeline as train_pipeline
from jaxkd.data.preprocess import Preprocess as Preprocess
from jaxkd.data.sharding import to_global_arrays as to_global_arrays
from jaxkd.data.sources import DatasetSpec as DatasetSpec
from jaxkd.data.sources import dataset_spec as dataset_spec
from jaxkd.data.sources import open_source as open_source
