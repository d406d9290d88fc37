"""benchmarks/step_time.py on a hidden-64 Llama: one JSON line per variant, dense and NF4 bases."""

import json
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import step_time


@pytest.mark.slow
@pytest.mark.parametrize("quantize", [False, True], ids=["dense", "nf4"])
def test_each_variant_reports_step_time_and_trainable_parameters(quantize, monkeypatch, capsys):
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    monkeypatch.setitem(step_time.SHAPES, "tiny", config)
    argv = ["--model", "tiny", "--batch", "2", "--seq", "16", "--targets", "qv", "--rank", "4", "--steps", "8",
            "--warmup", "1", *(["--quantize-4bit"] if quantize else [])]
    step_time.main(argv)
    records = {r["variant"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(records) == set(step_time.VARIANTS)
    layers = 2 * 2  # q_proj and v_proj (64 x 64) in each of 2 blocks
    assert records["frozen_bound"]["trainable_params"] == 0
    assert records["peft_lora"]["trainable_params"] == layers * (4 * 64 + 64 * 4)
    assert records["asymtune_b_only"]["trainable_params"] == layers * 64 * 4
    assert records["asymtune_b_only_2r"]["trainable_params"] == layers * 64 * 8
    assert all(r["base_weights"] == ("nf4" if quantize else "dense") and r["step_time_s"] > 0
               for r in records.values())
