"""Recipes: typed YAML documents that say what to fine-tune and how.

`load(path, overrides)` reads a recipe with a safe YAML loader (bounded in size, nesting and alias
expansion), resolves `extends:` (a path relative to the file, deep-merged, the child wins, cycles
rejected), applies `--set key.path=value` overrides (values parsed as YAML), resolves relative local
paths against the file that set them (`--set`: the working directory) and validates the result against
the pydantic models below. Every problem is raised as one `RecipeError` naming the file and the dotted
key, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from asymtune import assets
from asymtune.errors import UserError
from asymtune.registry import TASKS

NAME_PATTERN = re.compile(r"[a-z0-9._-]+\Z")  # \Z, not $: "$" also matches before a trailing newline
MAX_NAME_LENGTH = 100  # a run folder name, well inside every file system's 255
MAX_SEED = 2**32 - 1  # numpy's seed range (the Trainer seeds numpy too)
MAX_RECIPE_BYTES = 1 << 20
MAX_DEPTH = 16  # a recipe is 3 levels deep; lists of mappings (data.eval) add one or two
MAX_NODES = 20_000  # keys and values, aliases counted each time they are used
LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".gguf")
PATH_KEYS = ("model.name", "model.gguf_file", "data.train", "data.eval")
KEY_ALIASES = {"lr": "learning_rate", "bs": "batch_size", "epoch": "epochs", "wd": "weight_decay",
               "steps": "max_steps", "r": "rank", "lora_alpha": "alpha", "target_modules": "targets",
               "gradient_accumulation_steps": "grad_accum", "lora_dropout": "dropout"}
FactorInit = Literal["orthogonal", "kaiming_uniform", "gaussian", "zero", "svd"]
SEEDED_INITS = ("orthogonal", "kaiming_uniform", "gaussian", "zero")  # drawn from the adapter seed alone (svd reads W0)
Tracker = Literal["tensorboard", "wandb", "mlflow", "trackio"]


class RecipeError(UserError):
    """A recipe problem, phrased for the user: file, dotted key, what was expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class FactorSpec(_Strict):
    """How one LoRA factor starts and whether the optimizer updates it."""

    init: FactorInit
    trainable: bool
    learning_rate: float | None = Field(None, gt=0, description="this factor's rate (default: train.learning_rate)")
    weight_decay: float | None = Field(None, ge=0, description="this factor's decay (default: train.weight_decay)")

    @property
    def label(self) -> str:
        """e.g. 'orthogonal frozen' or 'zero trained'."""
        return f"{self.init} {'trained' if self.trainable else 'frozen'}"

    @model_validator(mode="after")
    def _optimised_only_if_trained(self) -> FactorSpec:
        if not self.trainable and (self.learning_rate is not None or self.weight_decay is not None):
            raise ValueError("a frozen factor is not optimised: remove its learning_rate / weight_decay, or train it")
        return self


class QuantizationSpec(_Strict):
    """QLoRA: the frozen base loaded quantized by bitsandbytes; the adapter trains in model.dtype."""

    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit only: NormalFloat4 (QLoRA) or FP4")
    double_quant: bool = Field(True, description="4-bit only: quantize the quantization constants too")


class ModelSpec(_Strict):
    name: str | None = Field(None, description="hub id, local folder, or asset name")
    gguf_file: str | None = Field(None, description="local GGUF file, dequantized on load")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    quantization: QuantizationSpec | None = Field(None, description="sft: load the base quantized (QLoRA)")

    @model_validator(mode="after")
    def _name_or_gguf(self) -> ModelSpec:
        if self.name is None and self.gguf_file is None:
            raise ValueError("give model.name (hub id, folder or asset) or model.gguf_file")
        if self.quantization and self.gguf_file:
            raise ValueError("model.quantization quantizes a model.name checkpoint; GGUF files are dequantized")
        return self


GlueTaskName = Literal[TASKS["classification"].datasets]  # type: ignore[valid-type]
Summarization = Literal[TASKS["seq2seq"].datasets]  # type: ignore[valid-type]
TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]


SftFormat = Literal["alpaca", "prompt_completion", "messages"]


class SourceSpec(_Strict):
    """One training source of a mix (`data.train` as a list; task sft)."""

    train: str = Field(description="hub dataset id, local file, or asset name")
    name: str | None = Field(None, description="its label in metrics (eval_<name>_loss); default: from train")
    format: SftFormat | None = Field(None, description="default: data.format")
    config: str | None = Field(None, description="hub dataset configuration")
    split: str = "train"
    eval: str | None = Field(None, description="its held-out file or hub id; else data.eval_fraction of it")
    weight: float = Field(1.0, gt=0, description="its share of the training mix, relative to the others")

    @property
    def label(self) -> str:
        """The metric-safe name: `name`, else the file stem or the last part of a hub id."""
        raw = self.name or Path(self.train.rstrip("/")).stem or self.train
        return re.sub(r"[^a-z0-9]+", "_", raw.lower()).strip("_") or "source"


class DataSpec(_Strict):
    train: str | list[SourceSpec] = Field(description="hub dataset id, local json/jsonl/csv/tsv/parquet file, or "
                                                      "asset name; sft: or a list of sources to mix")
    format: SftFormat | None = Field(None, description="sft only")
    config: str | None = Field(None, description="hub dataset configuration (GLUE: the task)")
    glue_task: GlueTaskName | None = Field(None, description="classification: GLUE columns, labels, metrics")
    text_fields: list[str] | None = Field(None, description="classification: input column(s) of your own data")
    encoding: str = Field("utf-8", description="text encoding of local csv/tsv/json/jsonl files and .txt folders")
    label_field: str = "label"
    summarization: Summarization | None = Field(None, description="seq2seq: built-in dataset")
    source_field: str | None = Field(None, description="seq2seq: input column of your own data")
    target_field: str | None = Field(None, description="seq2seq: output column of your own data")
    max_target_length: int = Field(128, ge=1, description="seq2seq: tokens kept of each target")
    train_envs: list[str] | None = Field(None, description="image: DomainBed environment(s) to train on")
    test_envs: list[str] | None = Field(None, description="image: the out-of-domain environment(s) to test on "
                                                          "(default: every one not trained on)")
    class_map: dict[str, dict[str, str | None]] | None = Field(
        None, description="image: {env: {folder: class}}; a folder mapped to null is left out"
    )
    image_size: int | None = Field(
        None, ge=16, description="image: square input size for timm models that accept any (default: the model's)"
    )
    split: str = "train"
    eval: str | dict[str, str] | None = Field(
        None, description="held-out file/hub id, or {name: file} for several; else eval_fraction of train"
    )
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    validation_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="a further seeded share of train, scored as validation_* to choose "
                                         "hyperparameters on, so that the eval split stays an untouched test split"
    )
    split_seed: int | None = Field(
        None, ge=0, description="seed of the eval/validation split (default: the run's seed); fixed, every seed is "
                                "scored on the same rows"
    )
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    max_length: int = Field(1024, ge=8)
    completion_only_loss: bool = True
    packing: bool = Field(False, description="sft: pack rows into max_length sequences (TRL's BFD, padding-free)")

    @field_validator("train")
    @classmethod
    def _sources_are_distinct(cls, value: str | list[SourceSpec]) -> str | list[SourceSpec]:
        if isinstance(value, list):
            if not value:
                raise ValueError("list at least one source, or give one as a string")
            labels = [source.label for source in value]
            if len(set(labels)) != len(labels):
                raise ValueError(f"sources named alike ({', '.join(labels)}): give each a distinct name")
        return value

    @field_validator("text_fields", "train_envs", "test_envs", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"{value!r} is not a text encoding Python knows (e.g. utf-8, latin-1, cp1252)") from None


Method = Literal["lora", "lora_fa", "adalora", "ia3", "vera", "full", "linear_probe"]
RANKED_METHODS = ("lora", "lora_fa", "adalora", "vera")  # need adapter.rank and adapter.targets


class AdapterSpec(_Strict):
    """What to train. `lora` is the asymmetric core (per-factor init and freezing); the rest are the
    paper's baselines: LoRA-FA (PEFT's optimizer: A frozen kaiming, B trained), AdaLoRA, (IA)³ and VeRA
    through PEFT, full fine-tuning, and linear probing (the classification head only)."""

    method: Method = "lora"
    rank: int | None = Field(None, ge=1, description="lora/lora_fa/vera rank; adalora initial rank")
    alpha: float | None = Field(None, gt=0, description="default 2 x rank, as in the paper")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] | Literal["all-linear"] | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED, description="drives every random factor")
    A: FactorSpec = FactorSpec(init="kaiming_uniform", trainable=True)
    B: FactorSpec = FactorSpec(init="zero", trainable=True)
    fused: bool = Field(True, description="fused forward/backward for frozen-A layers (B-only)")
    lr_ratio: float | None = Field(None, gt=0, description="LoRA+: B's learning rate = lr_ratio x A's")
    adalora_target_rank: int | None = Field(None, ge=1, description="adalora: average rank kept (default rank/2)")
    ia3_feedforward: list[str] | None = Field(None, description="ia3: targets scaled at their input (MLP)")

    @property
    def per_factor_optimisation(self) -> bool:
        """Whether A and B learn with their own rates or decay (one optimizer, a parameter group each)."""
        return self.lr_ratio is not None or any(
            value is not None for f in (self.A, self.B) for value in (f.learning_rate, f.weight_decay))

    def factor_rates(self, learning_rate: float) -> tuple[float, float]:
        """(A's, B's) learning rate given train.learning_rate: each factor's own, B's = lr_ratio × A's."""
        rate_a = self.A.learning_rate or learning_rate
        rate_b = self.B.learning_rate or (rate_a * self.lr_ratio if self.lr_ratio else learning_rate)
        return rate_a, rate_b

    @property
    def scale(self) -> float:
        """s = alpha / r, the factor in W0 + s·B·A."""
        return self.lora_alpha / self.rank

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    @field_validator("targets", "ia3_feedforward", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) and value != "all-linear" else value

    @field_validator("targets", "ia3_feedforward")
    @classmethod
    def _module_names(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, list) and not value:
            raise ValueError("list at least one module name, or write 'all-linear'")
        if isinstance(value, list) and any(not name.strip() for name in value):
            raise ValueError(f"an empty module name in {value}: each entry names a module, e.g. q_proj")
        return value

    @model_validator(mode="after")
    def _method_settings(self) -> AdapterSpec:
        method = self.method
        defaults = type(self).model_fields
        lora_only = [k for k in ("A", "B", "fused", "lr_ratio") if getattr(self, k) != defaults[k].default]
        if method in RANKED_METHODS and (self.rank is None or self.targets is None):
            raise ValueError(f"method {method} needs adapter.rank and adapter.targets")
        if method == "ia3" and self.targets is None:
            raise ValueError("method ia3 needs adapter.targets")
        if method in ("full", "linear_probe") and (self.rank is not None or self.targets is not None):
            raise ValueError(f"method {method} trains no adapter: remove adapter.rank and adapter.targets")
        if method != "lora" and lora_only:
            raise ValueError(f"adapter.{', adapter.'.join(lora_only)} apply to method lora, not {method}")
        if method != "adalora" and self.adalora_target_rank is not None:
            raise ValueError("adapter.adalora_target_rank applies to method adalora only")
        if method != "ia3" and self.ia3_feedforward is not None:
            raise ValueError("adapter.ia3_feedforward applies to method ia3 only")
        return self._adapter_can_learn() if method == "lora" else self

    def _adapter_can_learn(self) -> AdapterSpec:
        a, b = self.A, self.B
        if self.lr_ratio is not None and not (a.trainable and b.trainable):
            raise ValueError("lr_ratio sets B's learning rate relative to A's: it needs both factors trained "
                             "(set the trained factor's learning_rate instead)")
        if self.lr_ratio is not None and b.learning_rate is not None:
            raise ValueError("lr_ratio and B.learning_rate both set B's learning rate: keep one")
        if not a.trainable and not b.trainable:
            raise ValueError("nothing is trainable: set A.trainable or B.trainable to true")
        if b.init == "zero" and not b.trainable:
            raise ValueError(
                "B is frozen at zero, so B·A stays zero and the adapter can never change the model; "
                "train B or give it a non-zero init"
            )
        if a.init == "zero" and not a.trainable:
            raise ValueError(
                "A is frozen at zero, so B·A stays zero and the adapter can never change the model; "
                "train A or give it a non-zero init"
            )
        if a.init == "zero" and b.init == "zero":
            raise ValueError(
                "A and B are both zero-initialised: every gradient of B·A is zero, so neither ever moves; "
                "give one factor a non-zero init (the paper: orthogonal or kaiming_uniform)"
            )
        return self


class TrainSpec(_Strict):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    logging_steps: int = Field(10, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="evaluate every N steps; default: at the end")
    gradient_checkpointing: bool = False
    save_steps: int = Field(500, ge=1, description="checkpoint every N steps and at the end (train --resume)")
    save_total_limit: int = Field(2, ge=2, description="checkpoints kept (the newest; 2 so one is always complete)")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after N evaluations without a lower "
                                                                  "eval loss (needs eval_steps)")
    keep_best: bool = Field(False, description="the run's adapter is the checkpoint with the lowest eval loss")
    liger_kernel: bool = Field(False, description="Liger Kernel's fused RMSNorm, SwiGLU, RoPE, linear cross-entropy "
                                                  "(CUDA)")
    report_to: tuple[Tracker, ...] = Field((), description="experiment trackers fed while training (asymtune.trackers)")
    project: str = Field("asymtune", min_length=1, description="the trackers' project / experiment name")

    @model_validator(mode="after")
    def _best_needs_evaluations(self) -> TrainSpec:
        wanted = [key for key, on in (("early_stopping_patience", self.early_stopping_patience is not None),
                                      ("keep_best", self.keep_best)) if on]
        if wanted and self.eval_steps is None:
            raise ValueError(f"{' and '.join(wanted)} need(s) train.eval_steps: an evaluation every N steps")
        if self.keep_best and self.save_steps % self.eval_steps:
            raise ValueError(f"keep_best: train.save_steps {self.save_steps} must be a multiple of train.eval_steps "
                             f"{self.eval_steps}, so the best evaluated step has a checkpoint")
        return self

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_is_a_list(cls, value: Any) -> Any:
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list):
            if len(set(value)) != len(value):
                raise ValueError(f"{value}: each tracker once")
            return tuple(value)
        return value


class GenerationSpec(_Strict):
    """Beam search used to evaluate seq2seq runs."""

    num_beams: int = Field(4, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1)


class Recipe(_Strict):
    name: str
    description: str = ""
    task: TaskName
    seed: int = Field(0, ge=0, le=MAX_SEED)
    model: ModelSpec
    data: DataSpec
    adapter: AdapterSpec
    train: TrainSpec = TrainSpec()
    generation: GenerationSpec = GenerationSpec()

    @property
    def split_seed(self) -> int:
        """The seed that draws the eval and validation rows: data.split_seed, else the run's seed."""
        return self.seed if self.data.split_seed is None else self.data.split_seed

    @property
    def family(self) -> str | None:
        """The id of this run's adapter family (`family_id`), None when its A is not a frozen seeded draw."""
        return family_id(self.model, self.adapter)

    @model_validator(mode="after")
    def _data_fits_task(self) -> Recipe:
        data = self.data
        for task, info in TASKS.items():
            stray = [f"data.{key}" for key in info.data_keys if task != self.task and getattr(data, key)]
            if stray:
                raise ValueError(f"{', '.join(stray)} belong(s) to task {task}, not {self.task}")
        if isinstance(data.eval, dict) and not TASKS[self.task].eval_mapping:
            raise ValueError(f"data.eval: task {self.task} takes one held-out file or hub id, not a mapping")
        if isinstance(data.train, list):
            if self.task != "sft":
                raise ValueError(f"data.train: a list of sources is built for task sft, not {self.task}")
            if data.eval is not None:
                raise ValueError("data.eval: with several sources, give each its own eval (data.train[i].eval)")
        if data.validation_fraction and self.task == "seq2seq":
            raise ValueError("data.validation_fraction is built for tasks sft, classification and image")
        if data.validation_fraction and isinstance(data.train, list):
            raise ValueError("data.validation_fraction: with several sources, give each its own eval instead")
        if data.validation_fraction + data.eval_fraction >= 1:
            raise ValueError(f"data.validation_fraction {data.validation_fraction} and data.eval_fraction "
                             f"{data.eval_fraction} leave no training rows")
        if self.task == "sft" and data.format is None:
            raise ValueError("task sft needs data.format (alpaca, prompt_completion or messages)")
        if self.task == "classification" and not (data.glue_task or data.text_fields):
            raise ValueError("task classification needs data.glue_task or data.text_fields")
        if self.task == "seq2seq" and not (data.summarization or (data.source_field and data.target_field)):
            raise ValueError("task seq2seq needs data.summarization or both data.source_field and data.target_field")
        if self.task == "image" and not (data.train_envs and data.eval_fraction > 0):
            raise ValueError("task image needs data.train_envs and data.eval_fraction (the in-domain test share; "
                             "DomainBed: 0.2)")
        if self.train.liger_kernel and self.task != "sft":
            raise ValueError(f"train.liger_kernel patches causal language models: it is built for task sft, not "
                             f"{self.task}")
        best = self.train.early_stopping_patience is not None or self.train.keep_best
        if best and self.task != "sft":
            raise ValueError(f"train.early_stopping_patience / keep_best: task {self.task} does not evaluate during "
                             "training; they are built for task sft")
        if best and data.eval is None and data.eval_fraction == 0:
            raise ValueError("train.early_stopping_patience / keep_best need an eval set: data.eval or "
                             "data.eval_fraction > 0")
        if self.model.quantization and self.task != "sft":
            raise ValueError(f"model.quantization (QLoRA) is built for task sft, not {self.task}")
        if self.model.quantization and self.adapter.method == "full":
            raise ValueError("model.quantization freezes the base in 4/8 bits; adapter.method full cannot train it")
        if self.adapter.method == "linear_probe" and self.task not in ("classification", "image"):
            raise ValueError(f"adapter.method linear_probe trains a classification head; task {self.task} has none")
        return self

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"{value!r} may use only lowercase letters, digits, '.', '_' and '-'")
        if value in {".", ".."}:
            raise ValueError(f"{value!r} is not a usable folder name")
        if len(value) > MAX_NAME_LENGTH:
            raise ValueError(f"{len(value)} characters; a run folder name has at most {MAX_NAME_LENGTH}")
        return value


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_files: bool = True) -> Recipe:
    """Read, merge, override and validate a recipe; raise RecipeError on any problem.

    Relative local paths (model.name, model.gguf_file, data.train, data.eval) are made absolute against the
    folder of the file that set them; with `check_files`, local paths that do not exist are errors."""
    path = Path(path)
    document, origins = _read_with_extends(path, chain=())
    for override in overrides:
        key, value = _parse_override(override)
        _set_dotted(document, key, value, origins, source=f"--set {override}")
    missing = _resolve_paths(document, origins)
    recipe = validate(document, origins, path)
    if check_files and missing:
        raise RecipeError("\n".join(
            f"{origins.get(key, path)}: '{key}': {file} does not exist (relative paths are resolved against the "
            "recipe file that sets them)" for key, file in missing
        ))
    return recipe


def validate(document: dict[str, Any], origins: dict[str, str], path: Path) -> Recipe:
    """Validate a merged recipe document; `origins` maps dotted keys to the file that set them."""
    try:
        return Recipe.model_validate(document)
    except ValidationError as error:
        problems = [_describe(issue, origins, path) for issue in error.errors()]
        raise RecipeError("\n".join(problems)) from None


def catalogue(root: Path) -> list[tuple[str, str]]:
    """(path relative to `root`, one-line description or why it does not load) of every runnable recipe
    below `root`; shared `base` settings that other recipes extend are left out."""
    if not root.is_dir():
        raise RecipeError(f"{root}: not a folder of recipes")
    entries = []
    for file in sorted(root.rglob("*.yaml")):
        relative = file.relative_to(root)
        if file.name == "base.yaml" or "base" in relative.parts:
            continue
        try:
            description = load(file, check_files=False).description
        except RecipeError as error:
            description = f"invalid: {str(error).splitlines()[0]}"
        entries.append((str(relative), description))
    if not entries:
        raise RecipeError(f"{root}: no recipes found")
    return entries


def family_id(model: ModelSpec, adapter: AdapterSpec) -> str | None:
    """A short id shared by the runs whose frozen A is one draw (same base model, adapter seed, targets, rank and A
    init; A frozen and drawn from the seed): their adapters merge exactly and share x·Aᵀ at inference."""
    if adapter.method != "lora" or adapter.A.trainable or adapter.A.init not in SEEDED_INITS:
        return None
    drawn = [model.name, model.gguf_file, adapter.seed, adapter.targets, adapter.rank, adapter.A.init]
    return hashlib.sha256(json.dumps(drawn).encode()).hexdigest()[:6]


def to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what a run directory stores)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: " + ("not a regular file (a pipe, device or folder); not a recipe"
                                         if path.exists() else "recipe file not found"))
    with path.open("rb") as handle:
        raw = handle.read(MAX_RECIPE_BYTES + 1)
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: larger than {MAX_RECIPE_BYTES // 1024} KiB; not a recipe")
    try:
        document = parse_yaml(raw.decode("utf-8"), str(path))
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text") from None
    if document is None:
        raise RecipeError(f"{path}: the recipe is empty")
    if not isinstance(document, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(document).__name__}")
    return document


def _read_with_extends(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise RecipeError(f"{path}: 'extends' forms a cycle: {cycle}")
    document = _read_yaml(path)
    parent_ref = document.pop("extends", None)
    own_origins = {key: str(path) for key in _dotted_keys(document)}
    if parent_ref is None:
        return document, own_origins
    if not isinstance(parent_ref, str):
        raise RecipeError(f"{path}: 'extends' must be a relative path to another recipe")
    parent_path = Path(os.path.normpath(path.parent / parent_ref))
    if not parent_path.is_file():
        raise RecipeError(f"{path}: 'extends' names {parent_ref!r}, but {parent_path} does not exist")
    parent, origins = _read_with_extends(parent_path, (*chain, resolved))
    origins.update(own_origins)
    return _deep_merge(parent, document), origins


def _deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _dotted_keys(document: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in document.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, dotted + "."))
    return keys


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-4` as a float (YAML 1.1 wants `1.0e-4`; YAML 1.2 and users do not)
    and refusing a key written twice in one mapping (the safe loader silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {first} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep)


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, where: str) -> Any:
    """The YAML document in `text` (`RecipeLoader`), refusing documents nested deeper than MAX_DEPTH or with
    more than MAX_NODES values once aliases are expanded (a "billion laughs" document), and integers Python
    will not parse."""
    try:
        document = yaml.load(text, Loader=RecipeLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as error:
        raise RecipeError(f"{where}: not valid YAML: {error}") from None
    except RecursionError:
        raise RecipeError(f"{where}: nested too deeply to be a recipe") from None
    except ValueError as error:  # e.g. an integer of more than 4,300 digits
        raise RecipeError(f"{where}: {error}") from None
    _check_shape(document, where)
    return document


def _check_shape(document: Any, where: str) -> None:
    stack, seen = [(document, 0)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if depth > MAX_DEPTH:
            raise RecipeError(f"{where}: nested more than {MAX_DEPTH} levels deep; not a recipe")
        if seen > MAX_NODES:
            raise RecipeError(f"{where}: more than {MAX_NODES:,} values (with YAML aliases expanded); not a recipe")
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for pair in node.items() for child in pair)
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def _parse_override(override: str) -> tuple[str, Any]:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {override!r}: expected key.path=value, e.g. train.learning_rate=1e-4")
    value = parse_yaml(raw, f"--set {override!r}: the value") if raw.strip() else ""
    return key.strip(), value


def _looks_local(key: str, value: str, base: Path, document: dict[str, Any]) -> bool:
    """Whether a path-valued key names a local file or folder rather than a hub id, asset or built-in dataset."""
    built_in = {name for info in TASKS.values() for name in info.datasets}
    if assets.is_asset(value) or value in built_in:
        return False
    if value.startswith(("./", "../", "/", "~")) or (base / value).exists() or key == "model.gguf_file":
        return True
    if key == "model.name":
        return False  # a hub id unless it is a folder
    return Path(value).suffix.lower() in LOCAL_SUFFIXES or (document.get("task") == "image" and key == "data.train")


def _resolve_paths(document: dict[str, Any], origins: dict[str, str]) -> list[tuple[str, str]]:
    """Make relative local paths absolute against the folder of the file that set them (`--set`: the working
    directory), in place; return (dotted key, path) of the local paths that do not exist."""
    missing = []
    for key in PATH_KEYS:
        section, name = key.split(".")
        node = document.get(section)
        if not isinstance(node, dict):
            continue
        value = node.get(name)
        if isinstance(value, dict):  # data.eval: {name: file}
            places = [(value, sub, f"{key}.{sub}") for sub in value]
        elif isinstance(value, list):  # data.train: sources, each with its own train and eval
            places = [(source, part, f"{key}.{index}.{part}") for index, source in enumerate(value)
                      if isinstance(source, dict) for part in ("train", "eval")]
        else:
            places = [(node, name, key)]
        for holder, slot, dotted in places:
            item = holder.get(slot)
            if not isinstance(item, str) or not item.strip():
                continue
            origin = origins.get(dotted) or origins.get(key, "")
            base = Path.cwd() if origin.startswith("--set") or not origin else Path(origin).parent
            if not _looks_local(key, item, base, document):
                continue
            holder[slot] = absolute = os.path.abspath(base / Path(item).expanduser())
            if not Path(absolute).exists():
                missing.append((dotted, absolute))
    return missing


def _set_dotted(
    document: dict[str, Any], key: str, value: Any, origins: dict[str, str], source: str
) -> None:
    parts = key.split(".")
    node = document
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise RecipeError(f"{source}: '{prefix}' is a value, not a section")
        node = child
    node[parts[-1]] = value
    for dotted in [key, *(f"{key}.{k}" for k in (_dotted_keys(value) if isinstance(value, dict) else []))]:
        origins[dotted] = source


def _describe(issue: dict[str, Any], origins: dict[str, str], path: Path) -> str:
    loc = tuple(str(part) for part in issue["loc"])
    dotted = ".".join(loc)
    where = origins.get(dotted) or _nearest_origin(loc, origins) or str(path)
    if issue["type"] == "extra_forbidden":
        message = f"{where}: unknown key '{dotted}'"
        suggestion = _closest_key(loc)
        return message + (f"; did you mean '{suggestion}'?" if suggestion else "")
    if issue["type"] == "missing":
        return f"{where}: missing required key '{dotted}'"
    text = issue["msg"].removeprefix("Value error, ")
    if not loc:
        return f"{where}: {text}"
    given = issue.get("input")
    if isinstance(given, dict):  # a cross-field rule on a whole section
        return f"{where}: '{dotted}': {text}"
    return f"{where}: '{dotted}': {text} (got {given!r})"


def _nearest_origin(loc: tuple[str, ...], origins: dict[str, str]) -> str | None:
    for cut in range(len(loc) - 1, 0, -1):
        found = origins.get(".".join(loc[:cut]))
        if found:
            return found
    return None


def _closest_key(loc: tuple[str, ...]) -> str | None:
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        sections = [a for a in typing.get_args(field.annotation) or (field.annotation,)
                    if isinstance(a, type) and issubclass(a, BaseModel)] if field else []
        if not sections:  # a section, or an optional one (X | None)
            return None
        model = sections[0]
    fields = list(model.model_fields)
    if KEY_ALIASES.get(loc[-1]) in fields:
        return KEY_ALIASES[loc[-1]]
    matches = difflib.get_close_matches(loc[-1], fields, n=1, cutoff=0.5)
    return matches[0] if matches else None
