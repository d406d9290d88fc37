"""Tabular data sources: a named asset, a local json/jsonl/csv/parquet file, or a hub dataset id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import datasets

from asymtune import assets

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


class DataError(Exception):
    """The data named by the recipe cannot be used; the message names the file, column or row."""


def load_table(
    ref: str, split: str = "train", log: Callable[[str], None] = print, config: str | None = None
) -> datasets.Dataset:
    """One split of `ref` (hub `config` if given) as a `datasets.Dataset`; a local file is one split."""
    if assets.is_asset(ref):
        return _load_local(assets.resolve(ref, log))
    path = Path(ref)
    if path.exists() or path.suffix.lower() in LOCAL_BUILDERS:
        return _load_local(path)
    try:
        return datasets.load_dataset(ref, config, split=split)
    except Exception as error:  # datasets raises many types for "not found / offline"
        raise DataError(
            f"{ref!r} is not a local file or a known asset ({', '.join(assets.ASSETS)}), "
            f"and loading it from the hub failed: {str(error).strip().splitlines()[0]}"
        ) from None


def _load_local(path: Path) -> datasets.Dataset:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    builder = LOCAL_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(LOCAL_BUILDERS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as error:  # pyarrow/json parse errors come in several types
        cause = error.__cause__ or error
        raise DataError(f"{path}: cannot read as {builder}: {str(cause).strip().splitlines()[0]}") from None
    if len(table) == 0:
        raise DataError(f"{path}: no rows")
    return table
