"""The on-disk form shared by the teacher cache and the completions: a JSON meta file
naming array_record shards, both in one directory."""

from __future__ import annotations

import json
import os
from typing import Any

from array_record.python import array_record_data_source


def open_records(
    directory: str | os.PathLike, meta_file: str, fmt: str, what: str
) -> tuple[dict[str, Any], array_record_data_source.ArrayRecordDataSource]:
    """`(meta, records)` of a directory written with `meta_file` of format `fmt`.

    Raises:
      FileNotFoundError: `directory` holds no `meta_file` (it holds no `what`).
      ValueError: the meta file declares another format.
    """
    path = os.path.join(directory, meta_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} holds no {what} (no {meta_file}).")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != fmt:
        raise ValueError(f"{path} has format {meta.get('format')!r}, expected {fmt}.")
    paths = [os.path.join(directory, name) for name in meta["shards"]]
    return meta, array_record_data_source.ArrayRecordDataSource(paths)
