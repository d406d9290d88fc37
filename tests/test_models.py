import pytest
import torch
from gguf_export import export_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from asymtune.gguf_checkpoint import convert_gguf
from asymtune.models import ModelLoadError, load_causal_lm, select_dtype
from asymtune.recipe import ModelSpec


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_dir, tmp_path_factory):
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    return export_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def reference_logits(tiny_llama_dir, tokens):
    with torch.no_grad():
        return LlamaForCausalLM.from_pretrained(tiny_llama_dir)(input_ids=tokens).logits


def test_gguf_file_loads_dequantized_with_same_logits_and_tokens(tiny_llama_dir, tiny_gguf):
    model, tokenizer = load_causal_lm(ModelSpec(gguf_file=str(tiny_gguf)))
    assert getattr(model.config, "quantization_config", None) is None and model.dtype == torch.float32
    text = "what is a building permit"
    assert tokenizer(text)["input_ids"] == AutoTokenizer.from_pretrained(tiny_llama_dir)(text)["input_ids"]
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=tokens).logits, reference_logits(tiny_llama_dir, tokens))


def test_gguf_converts_once_to_a_plain_hf_folder(tiny_llama_dir, tiny_gguf, tmp_path):
    convert_gguf(tiny_gguf, tmp_path / "converted")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "converted")
    assert "quantization_config" not in (tmp_path / "converted" / "config.json").read_text()
    tokens = torch.randint(0, model.config.vocab_size, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=tokens).logits, reference_logits(tiny_llama_dir, tokens))


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model.gguf_file: .*nope\.gguf does not exist"):
        load_causal_lm(ModelSpec(gguf_file=str(tmp_path / "nope.gguf")))


def test_local_folder_loads_in_requested_dtype(tiny_llama_dir):
    model, tokenizer = load_causal_lm(ModelSpec(name=str(tiny_llama_dir), dtype="bfloat16"))
    assert model.dtype == torch.bfloat16 and tokenizer.pad_token == "<pad>"


def test_auto_dtype_is_float32_without_a_gpu():
    assert select_dtype("auto") == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    assert select_dtype("float16") == torch.float16


def test_lm_eval_arguments_never_trust_remote_code_by_default(tiny_llama_dir):
    from asymtune.models import lm_eval_model_args

    args = lm_eval_model_args(ModelSpec(name=str(tiny_llama_dir)))
    assert args == {"pretrained": str(tiny_llama_dir), "trust_remote_code": False}  # a bool: "False" would be truthy


def test_a_tokenizer_that_does_not_fit_the_model_is_refused_naming_both_sizes(tiny_llama_dir, tmp_path):
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    model.resize_token_embeddings(1000)  # as if the folder's tokenizer came from another model
    model.save_pretrained(tmp_path / "mismatched")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(tmp_path / "mismatched")
    with pytest.raises(ModelLoadError, match="tokenizer has 400 tokens but the model's embeddings have 1,000 rows"):
        load_causal_lm(ModelSpec(name=str(tmp_path / "mismatched")))
