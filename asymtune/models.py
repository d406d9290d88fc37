"""Base models and tokenizers from a hub id, a local folder, a named asset or a GGUF file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from asymtune import assets, devices
from asymtune.errors import UserError
from asymtune.gguf_checkpoint import load_gguf
from asymtune.recipe import ModelSpec, QuantizationSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(UserError):
    """The model named by the recipe could not be loaded; the message says from where it was tried."""


def select_dtype(requested: str) -> torch.dtype:
    """`auto`: what `devices.auto_dtype` picks for the best available device (bfloat16 on a CUDA GPU that supports
    it, float32 on MPS and the CPU)."""
    return devices.auto_dtype() if requested == "auto" else DTYPES[requested]


def load_causal_lm(
    spec: ModelSpec, log: Callable[[str], None] = print
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer for `spec`, in the dtype `select_dtype(spec.dtype)` picks."""
    dtype = select_dtype(spec.dtype)
    if spec.gguf_file is not None:
        gguf_file = Path(spec.gguf_file)
        if not gguf_file.is_file():
            raise ModelLoadError(f"model.gguf_file: {gguf_file} does not exist")
        model, tokenizer = load_gguf(gguf_file)
        return model.to(dtype), with_pad_token(tokenizer)
    source = model_source(spec.name, log)
    kwargs = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    quantization = {"quantization_config": bitsandbytes_config(spec.quantization, dtype)} if spec.quantization else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **quantization, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"model.name {spec.name!r} is not a local folder or a known asset "
            f"({', '.join(assets.ASSETS)}), and loading it from the hub failed: {_first_line(error)}"
        ) from None
    if spec.quantization and not torch.cuda.is_available():
        keep_4bit_layers_differentiable_on_cpu(model)
    check_vocabulary(model, tokenizer, spec.name)
    return model, with_pad_token(tokenizer)


def check_vocabulary(model: torch.nn.Module, tokenizer, source: str) -> None:
    """Refuse a tokenizer that does not belong to the model: more tokens than embedding rows, or fewer than half
    of them (models pad their embeddings to a multiple of 64 or 128, never to twice the vocabulary)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is None or not hasattr(tokenizer, "__len__"):
        return
    if len(tokenizer) > rows or len(tokenizer) < rows // 2:
        raise ModelLoadError(
            f"model {source!r}: its tokenizer has {len(tokenizer):,} tokens but the model's embeddings have {rows:,} "
            "rows, so the tokenizer does not belong to the model (a model folder saved without its tokenizer?)"
        )


def keep_4bit_layers_differentiable_on_cpu(model: torch.nn.Module) -> None:
    """On a CPU with AVX512-BF16, a bitsandbytes 4-bit layer repacks its weight for a faster kernel the
    first time it runs in eval mode, and from then on its output no longer carries gradients to its input:
    after an evaluation, training would stop reaching the adapters (grad norm 0). Keep the plain kernel."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def bitsandbytes_config(spec: QuantizationSpec, compute_dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for `spec` (QLoRA: NF4 with double quantization, compute in model.dtype)."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError("model.quantization needs bitsandbytes: pip install 'asymtune[quantization]'")
    from transformers import BitsAndBytesConfig

    if spec.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=spec.quant_type, bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of `model` as the unquantized model has them (a 4-bit tensor packs several per element)."""
    total = 0
    for param in model.parameters():
        if type(param).__name__ == "Params4bit":  # two 4-bit values per byte of its storage type
            total += param.numel() * 2 * param.quant_storage.itemsize
        else:
            total += param.numel()
    return total


def label_maps(names: list[str]) -> dict[str, dict]:
    """transformers' `id2label` / `label2id` for classes in output order (a classifier config's keyword
    arguments, and what a run and its adapter folder store as labels.json)."""
    return {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}


def load_pretrained(
    spec: ModelSpec, what: str, model_class, processor_class, log: Callable[[str], None] = print, **model_kwargs
):
    """(model, tokenizer or image processor) of a non-GGUF model, in `select_dtype(spec.dtype)`.

    `what` names the model kind in errors, e.g. "a sequence classifier"."""
    if spec.gguf_file:
        raise ModelLoadError(f"model.gguf_file: GGUF holds causal LMs; {what} needs model.name")
    source = model_source(spec.name, log)
    options = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    try:
        processor = processor_class.from_pretrained(source, **options)
        model = model_class.from_pretrained(source, dtype=select_dtype(spec.dtype), **model_kwargs, **options)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"model.name {spec.name!r}: cannot load {what}: {_first_line(error)}") from None
    check_vocabulary(model, processor, spec.name)
    return model, processor


def model_config(spec: ModelSpec, log: Callable[[str], None] = print):
    """The model's transformers config alone (no weights): from its folder, asset, hub id or GGUF file."""
    from transformers import AutoConfig

    source = str(Path(spec.gguf_file).parent) if spec.gguf_file else model_source(spec.name, log)
    kwargs = {"gguf_file": Path(spec.gguf_file).name} if spec.gguf_file else {"revision": spec.revision}
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=spec.trust_remote_code, **kwargs)
    except (OSError, ValueError) as error:
        if Path(source).is_dir():
            raise ModelLoadError(f"model {source!r}: cannot read its config: {_first_line(error)}") from None
        raise ModelLoadError(
            f"model.name {spec.name!r} is not a local folder or a known asset ({', '.join(assets.ASSETS)}), and "
            f"reading its config from the hub failed: {_first_line(error)}"
        ) from None


def adapted_dimensions(
    spec: ModelSpec, targets: list[str] | str, log: Callable[[str], None] = print
) -> list[tuple[int, int]]:
    """(d_out, d_in) of every linear layer `targets` selects in the causal LM `spec` names, from its config."""
    return linear_dimensions(model_config(spec, log), targets, AutoModelForCausalLM)


def linear_dimensions(config, targets: list[str] | str, model_class) -> list[tuple[int, int]]:
    """(d_out, d_in) of every linear layer `targets` selects in `model_class.from_config(config)`, built on
    the meta device (no memory). 'all-linear' follows PEFT: every nn.Linear except the output head."""
    with torch.device("meta"):
        model = model_class.from_config(config)
    head = model.get_output_embeddings()
    return [
        (module.out_features, module.in_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and (name.rsplit(".", 1)[-1] in targets if isinstance(targets, list) else module is not head)
    ]


def lm_eval_model_args(spec: ModelSpec, log: Callable[[str], None] = print) -> dict[str, str | bool]:
    """`pretrained` (and `gguf_file`) arguments for lm-eval's `hf` model for the same model as `spec`."""
    if spec.gguf_file is not None:
        return {"pretrained": str(Path(spec.gguf_file).parent), "gguf_file": Path(spec.gguf_file).name}
    args = {"pretrained": model_source(spec.name, log), "trust_remote_code": spec.trust_remote_code}
    if spec.revision:
        args["revision"] = spec.revision
    return args


def model_source(name: str, log: Callable[[str], None]) -> str:
    """A local folder as given, a named asset resolved (fetched if needed), anything else as a hub id."""
    if Path(name).is_dir():
        return name
    if assets.is_asset(name):
        return str(assets.resolve(name, log))
    return name


def with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
