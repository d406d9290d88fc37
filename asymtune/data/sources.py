"""Data sources: a named asset, a local json/jsonl/csv/tsv/parquet file, a folder of class folders of .txt
documents, or a hub dataset id."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import datasets

from asymtune import assets
from asymtune.errors import UserError

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


class DataError(UserError):
    """The data named by the recipe cannot be used; the message names the file, column or row."""


def require_columns(table: datasets.Dataset, columns: list[str] | tuple[str, ...], source: str,
                    needs: str = "missing", hint: str = "") -> None:
    """DataError "SOURCE: NEEDS column(s) …; the data has …HINT" when `table` lacks any of `columns` (`needs` says
    who needs them, e.g. "format 'alpaca' needs")."""
    missing = [column for column in columns if column not in table.column_names]
    if missing:
        raise DataError(f"{source}: {needs} column(s) {', '.join(missing)}; the data has "
                        f"{', '.join(table.column_names)}{hint}")


def require_text(table: datasets.Dataset, columns: list[str] | tuple[str, ...], source: str) -> None:
    """DataError naming the first row (0-based, as in the file) whose value in one of `columns` is not text."""
    for column in columns:
        for row, value in enumerate(table[column]):
            if not isinstance(value, str):
                got = "None" if value is None else f"a {type(value).__name__} ({value!r:.60})"
                raise DataError(f"{source}: row {row}: column {column!r} must be text, got {got}")


def load_table(
    ref: str, split: str = "train", log: Callable[[str], None] = print, config: str | None = None,
    encoding: str = "utf-8",
) -> datasets.Dataset:
    """One split of `ref` (hub `config` if given) as a `datasets.Dataset`; a local file is one split, read
    as `encoding` text (csv, tsv, json, jsonl, .txt folders)."""
    if assets.is_asset(ref):
        return _load_local(assets.resolve(ref, log), log, encoding)
    path = Path(ref)
    if path.exists() or path.suffix.lower() in LOCAL_BUILDERS:
        return _load_local(path, log, encoding)
    try:
        return datasets.load_dataset(ref, config, split=split)
    except Exception as error:  # datasets raises many types for "not found / offline"
        raise DataError(
            f"{ref!r} is not a local file or a known asset ({', '.join(assets.ASSETS)}), "
            f"and loading it from the hub failed: {str(error).strip().splitlines()[0]}"
        ) from None


def load_class_folders(root: Path, log: Callable[[str], None] = print, encoding: str = "utf-8") -> datasets.Dataset:
    """A folder with one subfolder per class of .txt documents -> rows {text, label (ClassLabel)}; bytes that
    are not `encoding` are replaced, with a warning naming the files."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class subfolders")
    texts, labels, repaired = [], [], []
    for index, name in enumerate(classes):
        files = sorted((root / name).glob("*.txt"))
        if not files:
            raise DataError(f"{root / name}: class {name!r} has no .txt documents")
        for file in files:
            raw = file.read_bytes()
            try:
                texts.append(raw.decode(encoding))
            except UnicodeDecodeError:
                texts.append(raw.decode(encoding, errors="replace"))
                repaired.append(str(file))
            labels.append(index)
    if repaired:
        log(f"[yellow]warning:[/yellow] {len(repaired)} file(s) not valid {encoding.upper()}, bad bytes replaced "
            "(set data.encoding if the folder is in another encoding): "
            + ", ".join(repaired[:3]))
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=classes)})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def _load_local(path: Path, log: Callable[[str], None] = print, encoding: str = "utf-8") -> datasets.Dataset:
    if path.is_dir():
        return load_class_folders(path, log, encoding)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    builder = LOCAL_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(LOCAL_BUILDERS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if builder != "parquet":
        check_text(path, encoding)
        if builder == "json":
            check_json(path, encoding)
    options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    if builder != "parquet":
        options["encoding"] = encoding
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as error:  # pyarrow/json parse errors come in several types
        cause = error.__cause__ or error
        raise DataError(f"{path}: cannot read as {builder}: {str(cause).strip().splitlines()[0]}") from None
    if len(table) == 0:
        raise DataError(f"{path}: no rows")
    return table


def check_text(path: Path, encoding: str = "utf-8") -> None:
    """Refuse a text data file that is not `encoding` or holds only blank lines, naming the first bad line."""
    blank = True
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                text = line.decode(encoding)
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}: line {number} is not valid {encoding.upper()} (byte 0x{line[error.start]:02x} at column "
                    f"{error.start + 1}); save the file as UTF-8, or set data.encoding (e.g. latin-1, cp1252)"
                ) from None
            blank = blank and not text.strip()
    if blank:
        raise DataError(f"{path}: no rows (only blank lines)")


def check_json(path: Path, encoding: str = "utf-8") -> None:
    """JSON data is one document (a list of row objects, or an object of columns) or JSON lines, one row
    object per line; anything else is refused naming the line (pyarrow crashes on some, e.g. a `null` row)."""
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(path.read_text(encoding=encoding))
        except json.JSONDecodeError:
            document = None  # not one document: read as JSON lines below
        else:
            rows_ok = isinstance(document, list) and all(isinstance(row, dict) for row in document)
            if rows_ok or isinstance(document, dict):
                return
            raise DataError(f"{path}: the JSON document must be a list of row objects or an object of columns, "
                            f"not {_json_type(document)}")
    with path.open(encoding=encoding) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                why = f"{error.msg} at column {error.colno}"
                raise DataError(f"{path}: line {number} is not valid JSON ({why})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {number} is a JSON {_json_type(row)}, not an object (one row per line)")


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
