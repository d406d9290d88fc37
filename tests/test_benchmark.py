"""benchmarks/step_time.py and peers.py on a hidden-64 Llama: one JSON line per variant, dense and NF4 bases."""

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import peers
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
    assert set(records) == set(step_time.DEFAULT_VARIANTS)
    layers = 2 * 2  # q_proj and v_proj (64 x 64) in each of 2 blocks
    assert records["frozen_bound"]["trainable_params"] == 0
    assert records["peft_lora"]["trainable_params"] == layers * (4 * 64 + 64 * 4)
    assert records["asymtune_b_only"]["trainable_params"] == layers * 64 * 4
    assert records["asymtune_b_only_2r"]["trainable_params"] == layers * 64 * 8
    assert all(r["base_weights"] == ("nf4" if quantize else "dense") and r["step_time_s"] > 0
               for r in records.values())


def test_model_flops_count_every_projection_and_attention():
    """Against the built model's own linear layers: forward = 2·(weights)·tokens + attention's QKᵀ and AV."""
    config = step_time.SHAPES["tiny"]
    model = LlamaForCausalLM(config)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    batch, seq = 3, 10
    attention = 2 * 2 * config.num_hidden_layers * batch * seq * seq * config.hidden_size
    assert step_time.model_flops(config, batch, seq) == 2 * (2 * weights * batch * seq + attention)
    assert step_time.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert step_time.peak_tflops("NVIDIA H100 PCIe") == 756.0 and step_time.peak_tflops("Tesla T4") is None


@pytest.mark.slow
def test_peers_runs_each_setting_in_its_own_process_and_tables_them(tmp_path, capsys):
    out = tmp_path / "peers.jsonl"
    peers.main(["--device", "cpu", "--shapes", "tiny-2x16", "--kernels", "plain,unsloth", "--steps", "8",
                "--warmup", "1", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    measured = {r["variant"]: r for r in records if "error" not in r}
    assert set(measured) == set(peers.KERNELS["plain"][1].split(","))
    assert all(r["shape"] == "tiny-2x16" and r["kernels"] == "plain" for r in measured.values())
    assert all(r["step_time_s"] > 0 and r["model_tflops_per_step"] > 0 for r in measured.values())
    failed = [r for r in records if "error" in r]
    assert len(failed) == 1 and failed[0]["kernels"] == "unsloth" and "runs alone on a GPU" in failed[0]["error"]
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny-2x16")]
    bound_row = next(r for r in rows if "| frozen_bound |" in r)
    assert bound_row.split("|")[9].strip() == "1.000"  # the bound against itself
    assert len(rows) == len(records)
    capsys.readouterr()
    peers.main(["--table", str(out)])  # the table again from the lines alone, as for a GPU run's two calls
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny-2x16")] == rows


def test_peers_keeps_a_setting_that_runs_out_of_time_as_one_error_line(tmp_path):
    out = tmp_path / "peers.jsonl"
    peers.main(["--device", "cpu", "--shapes", "tiny-2x16", "--kernels", "plain", "--timeout", "1", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[-1] == {"shape": "tiny-2x16", "kernels": "plain", "error": "stopped at the 1 s limit"}
