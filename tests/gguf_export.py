"""Write a small Llama + BPE tokenizer as a float32 GGUF file (llama.cpp's layout), for loader tests."""

from __future__ import annotations

import json
from pathlib import Path

from gguf import GGUFWriter
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm",
                  "lm_head.weight": "output"}
BLOCK_TENSORS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _llama_cpp_permute(weight, heads: int):
    """llama.cpp stores q/k rows interleaved per rotary pair; transformers reverses this on load."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape
    )


def export_gguf(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> Path:
    config = model.config
    writer = GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [token for token, _ in sorted(spec["model"]["vocab"].items(), key=lambda item: item[1])]
    special = {added["content"] for added in spec["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in special else 1 for token in tokens])  # 3 = control, 1 = normal
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)

    for name, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        if name in GLOBAL_TENSORS:
            writer.add_tensor(f"{GLOBAL_TENSORS[name]}.weight", array)
            continue
        _, _, block, *rest = name.split(".")
        module = ".".join(rest[:-1])
        if module == "self_attn.q_proj":
            array = _llama_cpp_permute(array, config.num_attention_heads)
        elif module == "self_attn.k_proj":
            array = _llama_cpp_permute(array, config.num_key_value_heads)
        writer.add_tensor(f"blk.{block}.{BLOCK_TENSORS[module]}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
