"""Baseline methods: each trains a step on the tiny RoBERTa and reports its parameter count."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import corpus, sft_recipe, write_jsonl
from transformers import AutoTokenizer, RobertaForSequenceClassification

from asymtune.adapters import methods
from asymtune.cli import main
from asymtune.models import load_causal_lm
from asymtune.recipe import AdapterSpec, ModelSpec
from asymtune.runs import resolve

pytestmark = pytest.mark.slow
HEAD = 32 * 32 + 32 + 32 * 2 + 2  # RoBERTa classification head: dense + out_proj
BASE_RANKED = {"rank": 4, "targets": ["query", "value"]}  # 4 square 32x32 layers (2 blocks x query, value)


@pytest.mark.parametrize(
    ("adapter", "trainable"),
    [
        ({"method": "lora", **BASE_RANKED, "A": {"init": "orthogonal", "trainable": False}}, 4 * 32 * 4 + HEAD),
        ({"method": "lora_fa", **BASE_RANKED}, 4 * 32 * 4 + HEAD),  # PEFT's LoRA-FA optimizer freezes A
        ({"method": "adalora", **BASE_RANKED}, 4 * (4 * 32 + 32 * 4 + 4) + HEAD),  # A, B and E (r singular values)
        ({"method": "vera", **BASE_RANKED}, 4 * (32 + 4) + HEAD),  # lambda_b (d_out) and lambda_d (r) per layer
        ({"method": "ia3", "targets": ["query", "value"]}, 4 * 32 + HEAD),
        ({"method": "linear_probe"}, HEAD),
        ({"method": "full"}, None),
    ],
    ids=lambda value: value["method"] if isinstance(value, dict) else "",
)
@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "gradient-checkpointing"])
def test_each_method_trains_and_counts_parameters(
    tiny_roberta_dir, write_recipe, tmp_path, adapter, trainable, checkpointing
):
    texts = corpus(40, 2)
    rows = [{"sentence1": texts[2 * i], "sentence2": texts[2 * i + 1], "label": i % 2} for i in range(20)]
    recipe = {
        "name": "tiny-method",
        "task": "classification",
        "model": {"name": str(tiny_roberta_dir)},
        "data": {
            "train": str(write_jsonl(tmp_path / "d.jsonl", rows)),
            "glue_task": "rte",
            "eval_fraction": 0.2,
            "max_length": 48,
        },
        "adapter": adapter,
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 0.01, "logging_steps": 1,
                  "gradient_checkpointing": checkpointing},
    }
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    [run] = resolve([str(tmp_path / "runs")])
    steps = [json.loads(line) for line in run.log_file.read_text().splitlines() if '"grad_norm"' in line]
    assert len(steps) == 2 and all(step["grad_norm"] > 0 for step in steps)  # gradients reach what trains
    params = run.read_json("metrics.json")["parameters"]
    expected = params["base"] if trainable is None else trainable
    assert params["trainable"] == expected
    assert params["trainable_percent"] == pytest.approx(100 * expected / params["base"])
    saved = run.model_dir if adapter["method"] in ("full", "linear_probe") else run.adapter_dir
    assert any(saved.glob("*.safetensors"))
    if saved == run.model_dir and not checkpointing:  # eval RUN loads the saved folder as the model
        rerun = CliRunner().invoke(main, ["eval", str(run.path)])
        assert rerun.exit_code == 0, rerun.output
        again, metrics = run.read_json("eval/task.json"), run.read_json("metrics.json")
        assert again["eval_validation_loss"] == pytest.approx(metrics["eval_validation_loss"], abs=1e-6)


def test_method_settings_are_checked(write_recipe, tmp_path):
    base = sft_recipe(tmp_path, tmp_path / "d.jsonl")
    cases = [
        ({"method": "linear_probe"}, "linear_probe trains a classification head; task sft has none"),
        ({"method": "full", "rank": 4}, "method full trains no adapter: remove adapter.rank"),
        ({"method": "vera", "targets": ["q_proj"]}, "method vera needs adapter.rank and adapter.targets"),
        (
            {"method": "ia3", "targets": ["q_proj"], "A": {"init": "zero", "trainable": True}},
            "adapter.A apply to method lora, not ia3",
        ),
    ]
    for adapter, message in cases:
        base["adapter"] = adapter
        result = CliRunner().invoke(main, ["validate", str(write_recipe(base))])
        assert result.exit_code == 2 and message in result.output, result.output


def test_sft_full_fine_tuning_saves_the_model(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    recipe = sft_recipe(tiny_llama_dir, alpaca_file)
    recipe["adapter"] = {"method": "full"}
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    [run] = resolve([str(tmp_path / "runs")])
    params = run.read_json("metrics.json")["parameters"]
    assert params["trainable"] == params["base"] and (run.model_dir / "config.json").is_file()
    # the saved folder is a model on its own: it reloads with the tokenizer it was trained with
    _, tokenizer = load_causal_lm(ModelSpec(name=str(run.model_dir)))
    reference = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert len(tokenizer) == len(reference) and tokenizer("a permit")["input_ids"] == reference("a permit")["input_ids"]


def test_adalora_on_a_bfloat16_base_trains_only_its_factors_and_singular_values(tiny_roberta_dir):
    """PEFT turns AdaLoRA's constant ranknum into a trainable parameter when it casts a bf16 model's adapter
    (what a GPU run loads): it stays frozen, and the count is A, B and E again."""
    model = RobertaForSequenceClassification.from_pretrained(tiny_roberta_dir, dtype=torch.bfloat16, num_labels=2)
    spec = AdapterSpec(method="adalora", **BASE_RANKED)
    adapted = methods.build(model, spec, "SEQ_CLS", total_steps=10)
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and not [name for name in trainable if "ranknum" in name]
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == 4 * (4 * 32 + 32 * 4 + 4) + HEAD
