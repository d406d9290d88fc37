"""`asymtune merge`: exact merging of adapters that share A, PEFT's merge otherwise, and merged runs used as runs."""

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import alpaca_rows, sft_recipe, write_jsonl
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import LlamaForCausalLM

from asymtune.cli import main
from asymtune.runs import resolve

pytestmark = pytest.mark.slow

B_ONLY = {}
LORA = {"A": {"init": "kaiming_uniform", "trainable": True}, "B": {"init": "zero", "trainable": True}}


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tmp_path_factory):
    """Runs on two tasks (different data): B-only with one adapter seed (a family), B-only with another seed,
    and LoRA; each trained long enough at a high rate that B (and A) move well away from their init."""
    folder = tmp_path_factory.mktemp("merge")
    root = folder / "runs"
    runs = {}
    for task in (0, 1):
        data = write_jsonl(folder / f"task{task}.jsonl", alpaca_rows(30, seed=10 + task))
        for label, adapter, seed in (("b", B_ONLY, 0), ("b-seed1", B_ONLY, 1), ("lora", LORA, 0)):
            recipe = sft_recipe(tiny_llama_dir, data, **adapter, seed=seed)
            recipe["name"] = f"{label}-task{task}"
            recipe["train"].update({"max_steps": 6, "learning_rate": 0.05})
            file = folder / f"{label}-{task}.yaml"
            file.write_text(yaml.safe_dump(recipe))
            result = CliRunner().invoke(main, ["train", str(file), "--output-dir", str(root)])
            assert result.exit_code == 0, result.output
            runs[f"{label}-task{task}"] = str(resolve([str(root / recipe["name"])])[-1].path)
    return runs, root


def merge(*args):
    return CliRunner().invoke(main, ["merge", *args])


def deltas(model_dir, adapter_dir) -> dict[str, torch.Tensor]:
    """PEFT's own ΔW = s·B·A of every LoRA layer of an adapter loaded on the base model."""
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(model_dir), str(adapter_dir))
    return {name: module.get_delta_weight("default").double()
            for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def weighted_sum(model_dir, adapter_dirs, weights):
    parts = [deltas(model_dir, folder) for folder in adapter_dirs]
    return {name: sum(w * part[name] for part, w in zip(parts, weights, strict=True)) for name in parts[0]}


def test_adapters_sharing_a_merge_exactly_at_their_rank(trained, tiny_llama_dir, tmp_path):
    runs, root = trained
    sources = [runs["b-task0"], runs["b-task1"]]
    result = merge(*sources, "--weights", "0.3,0.9", "--output", str(tmp_path / "merged"), "--output-dir", str(root))
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "merged" / "merge.json").read_text())
    assert (record["combination"], record["exact"], record["rank"]) == ("shared-A", True, 4)
    assert [s["weight"] for s in record["sources"]] == [0.3, 0.9]
    expected = weighted_sum(tiny_llama_dir, [f"{s}/adapter" for s in sources], [0.3, 0.9])
    got = deltas(tiny_llama_dir, tmp_path / "merged" / "adapter")
    assert max(float((got[n] - expected[n]).abs().max()) for n in expected) < 1e-6
    scale = max(float(d.abs().max()) for d in expected.values())
    assert scale > 1e-2  # the adapters really moved: the check above is not 0 == 0
    compact = tmp_path / "merged" / "compact"
    assert (compact / "compact.json").is_file()  # the merge is again a B plus A's seed
    assert CliRunner().invoke(main, ["export", str(compact), "--peft", str(tmp_path / "peft")]).exit_code == 0
    rebuilt = deltas(tiny_llama_dir, tmp_path / "peft")
    assert all(torch.equal(rebuilt[n], got[n]) for n in got)


def test_lora_adapters_merge_through_peft_and_the_error_is_reported(trained, tiny_llama_dir, tmp_path):
    runs, root = trained
    sources = [runs["lora-task0"], runs["lora-task1"]]
    expected = weighted_sum(tiny_llama_dir, [f"{s}/adapter" for s in sources], [0.5, 0.5])
    reported = {}
    for combination, rank in (("auto", 4), ("cat", 8)):
        out = tmp_path / combination
        result = merge(*sources, "--combination", combination, "--output", str(out), "--output-dir", str(root))
        assert result.exit_code == 0, result.output
        record = json.loads((out / "merge.json").read_text())
        assert record["rank"] == rank and "A" in record["not_shared"]
        got = deltas(tiny_llama_dir, out / "adapter")
        error = sum(float((got[n] - expected[n]).square().sum()) for n in expected) ** 0.5
        relative = error / sum(float(d.square().sum()) for d in expected.values()) ** 0.5
        assert record["delta_error"]["relative"] == pytest.approx(relative, rel=1e-3, abs=1e-6)  # PEFT sums in float32
        reported[combination] = record
    assert reported["auto"]["combination"] == "svd" and not reported["auto"]["exact"]
    assert reported["auto"]["delta_error"]["relative"] > 1e-3  # two rank-4 updates do not fit in rank 4
    assert reported["cat"]["exact"] and reported["cat"]["delta_error"]["relative"] < 1e-6


def test_a_merge_with_weights_one_and_zero_is_its_first_run_on_its_own_eval_set(trained, tmp_path):
    runs, root = trained
    out = tmp_path / "first-only"
    assert merge(runs["b-task0"], runs["b-task1"], "--weights", "1,0", "--output", str(out),
                 "--output-dir", str(root)).exit_code == 0
    result = CliRunner().invoke(main, ["eval", str(out), "--output-dir", str(root)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((out / "eval" / "task.json").read_text())
    first = json.loads((resolve([runs["b-task0"]])[0].path / "metrics.json").read_text())
    assert evaluated["eval_task0_loss"] == pytest.approx(first["eval_loss"], abs=1e-5)
    assert "eval_task1_loss" in evaluated and "eval_loss" in evaluated
    table = CliRunner().invoke(main, ["compare", str(out), runs["b-task0"], "--format", "json",
                                      "--output-dir", str(root)])
    assert table.exit_code == 0, table.output
    assert any(row.get("eval_task0_loss") == pytest.approx(evaluated["eval_task0_loss"])
               for row in json.loads(table.output))


@pytest.mark.parametrize(("args", "message"), [
    (["b-seed1-task0", "b-task1", "--combination", "exact"], "adapter.seed differs"),
    (["b-task0", "b-task1", "--weights", "1,2,3"], "3 weight(s) for 2 adapters"),
    (["b-task0", "b-task1", "--weights", "1,x"], "comma-separated numbers"),
    (["b-task0"], "at least two runs"),
])
def test_merge_refuses_what_it_cannot_do_with_one_message(trained, tmp_path, args, message):
    runs, root = trained
    refs = [runs.get(arg, arg) for arg in args]
    result = merge(*refs, "--output", str(tmp_path / "out"), "--output-dir", str(root))
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_merge_never_overwrites(trained, tmp_path):
    runs, root = trained
    (tmp_path / "taken").mkdir()
    result = merge(runs["b-task0"], runs["b-task1"], "--output", str(tmp_path / "taken"), "--output-dir", str(root))
    assert result.exit_code == 2 and "exists" in result.output


def test_runs_and_compare_show_which_runs_form_a_family(trained):
    from asymtune.run_list import summaries

    runs, root = trained
    methods = {line.run.split("/")[0]: line.method for line in summaries(root) if "-task" in line.run}
    family = {name: method.rsplit("family ", 1)[-1] if "family" in method else None for name, method in methods.items()}
    assert family["b-task0"] == family["b-task1"] is not None  # one adapter seed: one family across tasks
    assert family["b-seed1-task0"] not in (None, family["b-task0"])
    assert family["lora-task0"] is None  # A trains: no family
    table = CliRunner().invoke(main, ["compare", runs["b-task0"], runs["b-task1"], "--format", "json"])
    assert [row["factors"].endswith(f"family {family['b-task0']}") for row in json.loads(table.output)] == [True] * 2
