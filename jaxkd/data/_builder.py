"""What jaxkd's locally generated TFDS datasets share: array_record files, a findable home.

TFDS has no class-level default file format (`FileReaderBuilder` falls back to tfrecord) and
no way to say where a builder's files are other than the `pkg_dir_path` and `code_path`
class attributes, so each builder would otherwise repeat both.
"""

from __future__ import annotations

import sys
from typing import Any

import tensorflow_datasets as tfds
from etils import epath


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A `GeneratorBasedBuilder` written as array_record and located by its module's file.

    Subclasses are registered by TFDS as usual (this base is not) and implement `_info`,
    `_split_generators` and `_generate_examples`.

    References: TFDS `GeneratorBasedBuilder`; array_record.
    """

    def __init_subclass__(cls, **kwargs: Any):
        # TFDS finds a builder's checksums and metadata next to its source file through
        # `importlib.resources`, which fails for namespace-package installs; say where it is.
        path = epath.Path(sys.modules[cls.__module__].__file__)
        cls.pkg_dir_path = path.parent
        cls.code_path = path
        super().__init_subclass__(**kwargs)

    def __init__(self, *, file_format: str | None = None, **kwargs: Any):
        # Random access (tfds.data_source / Grain) needs array_record, which is also the
        # only format TFDS can write and read without TensorFlow.
        super().__init__(file_format=file_format or "array_record", **kwargs)
