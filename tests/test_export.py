"""Compact, PEFT and merged adapter forms."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import sft_recipe
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from asymtune.adapters.export import folder_size
from asymtune.cli import main
from asymtune.runs import resolve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir, tmp_path_factory):
    import yaml
    from conftest import alpaca_rows, write_jsonl

    folder = tmp_path_factory.mktemp("export")
    recipe = sft_recipe(tiny_llama_dir, write_jsonl(folder / "d.jsonl", alpaca_rows(20)))
    recipe["adapter"]["targets"] = ["q_proj", "o_proj"]  # square layers: compact is about half the size
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert (
        CliRunner().invoke(main, ["train", str(folder / "r.yaml"), "--output-dir", str(folder / "runs")]).exit_code == 0
    )
    [run] = resolve([str(folder / "runs")])
    return run


def logits(model_dir, adapter_dir, tokens):
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(model_dir), str(adapter_dir))
    with torch.no_grad():
        return model(input_ids=tokens).logits


def test_compact_round_trip_is_bit_exact(trained_run, tiny_llama_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(trained_run.path), "--compact", str(tmp_path / "compact")])
    assert result.exit_code == 0, result.output
    assert not any(".lora_A." in key for key in load_file(tmp_path / "compact" / "adapter_model.safetensors"))
    result = runner.invoke(main, ["export", str(tmp_path / "compact"), "--peft", str(tmp_path / "peft")])
    assert result.exit_code == 0, result.output

    original = load_file(trained_run.adapter_dir / "adapter_model.safetensors")
    rebuilt = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert original.keys() == rebuilt.keys()
    assert all(torch.equal(original[key], rebuilt[key]) for key in original)  # A regenerated bit for bit
    tokens = torch.randint(0, 100, (2, 8))
    assert torch.equal(
        logits(tiny_llama_dir, tmp_path / "peft", tokens), logits(tiny_llama_dir, trained_run.adapter_dir, tokens)
    )

    compact_weights = (tmp_path / "compact" / "adapter_model.safetensors").stat().st_size
    peft_weights = (trained_run.adapter_dir / "adapter_model.safetensors").stat().st_size
    assert 0.45 < compact_weights / peft_weights < 0.55  # d_in = d_out: B is half of A+B
    assert folder_size(tmp_path / "compact") < folder_size(trained_run.adapter_dir)


def test_merged_model_matches_the_adapter(trained_run, tiny_llama_dir, tmp_path):
    result = CliRunner().invoke(main, ["export", str(trained_run.path), "--merged", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    tokens = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=tokens).logits,
            logits(tiny_llama_dir, trained_run.adapter_dir, tokens),
            atol=1e-5,
            rtol=1e-5,
        )


def test_export_refuses_to_overwrite_and_needs_one_form(trained_run, tmp_path):
    (tmp_path / "exists").mkdir()
    result = CliRunner().invoke(main, ["export", str(trained_run.path), "--compact", str(tmp_path / "exists")])
    assert result.exit_code == 2 and "exists" in result.output
    result = CliRunner().invoke(main, ["export", str(trained_run.path)])
    assert result.exit_code == 2 and "exactly one" in result.output


def test_compact_form_records_fingerprints_and_refuses_a_factor_that_regenerates_differently(trained_run, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["export", str(trained_run.path), "--compact", str(tmp_path / "c")]).exit_code == 0
    record = json.loads((tmp_path / "c" / "compact.json").read_text())
    module = next(iter(record["fingerprints"]))
    assert set(record["fingerprints"][module]) == {"A"} and len(record["fingerprints"][module]["A"]) == 4
    record["fingerprints"][module]["A"][0] += 1e-6  # what a changed random stream would look like (it moves ~1)
    (tmp_path / "c" / "compact.json").write_text(json.dumps(record))
    result = runner.invoke(main, ["export", str(tmp_path / "c"), "--peft", str(tmp_path / "p")])
    assert result.exit_code == 2 and "regenerates differently" in result.output and module in result.output
    assert not (tmp_path / "p").exists()


def test_export_under_a_file_is_refused(trained_run, tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = CliRunner().invoke(main, ["export", str(trained_run.path), "--compact", str(tmp_path / "a-file" / "c")])
    assert result.exit_code == 2 and "is a file" in result.output and "Traceback" not in result.output
