"""Several adapters on one base model: mixed batches through one shared A equal PEFT's mixed batch and each
adapter alone; `asymtune predict RUN RUN --input` answers each row with the run it names."""

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import alpaca_rows, serving, sft_recipe, write_jsonl
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from transformers import LlamaForCausalLM

from asymtune.adapters import lora, shared_a
from asymtune.cli import main
from asymtune.recipe import AdapterSpec
from asymtune.runs import resolve


def save_adapters(model_dir, folder, seeds) -> list:
    """B-only adapters (A frozen orthogonal from adapter seed `seed`) with random B's, one per entry of `seeds`."""
    folders = []
    for i, seed in enumerate(seeds):
        spec = AdapterSpec(rank=4, targets=["q_proj", "v_proj"], seed=seed,
                           A={"init": "orthogonal", "trainable": False}, B={"init": "zero", "trainable": True})
        peft_model = lora.apply(LlamaForCausalLM.from_pretrained(model_dir), spec)
        generator = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for _, layer in lora.lora_layers(peft_model):
                weight = layer.lora_B["default"].weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
        lora.save_adapter(peft_model, spec, folder / f"a{i}")
        folders.append(folder / f"a{i}")
    return folders


def on_one_model(model_dir, folders):
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(model_dir), str(folders[0]), adapter_name="a0")
    for i, folder in enumerate(folders[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    return model.eval()


def test_a_mixed_batch_through_the_shared_a_equals_peft_and_each_adapter_alone(tiny_llama_dir, tmp_path,
                                                                             monkeypatch):
    folders = save_adapters(tiny_llama_dir, tmp_path, seeds=[0, 0, 0])
    model = on_one_model(tiny_llama_dir, folders)
    ids = torch.randint(4, 400, (5, 9), generator=torch.Generator().manual_seed(0))
    names = ["a2", "a0", shared_a.BASE, "a1", "a0"]
    with torch.no_grad():
        peft_mixed = model(input_ids=ids, adapter_names=names).logits
        alone = []
        for row, name in enumerate(names):
            if name == shared_a.BASE:
                with model.disable_adapter():
                    alone.append(model(input_ids=ids[row:row + 1]).logits)
            else:
                model.set_adapter(name)
                alone.append(model(input_ids=ids[row:row + 1]).logits)
    assert shared_a.enable(model, ["a0", "a1", "a2"]) == 4  # q_proj and v_proj of both layers
    monkeypatch.setattr(LoraLinear, "_mixed_batch_forward", lambda *a, **k: pytest.fail("PEFT's mixed path ran"))
    with torch.no_grad():
        ours = model(input_ids=ids, adapter_names=names).logits
    assert torch.allclose(ours, peft_mixed, atol=1e-5)
    assert torch.allclose(ours, torch.cat(alone), atol=1e-5)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the adapters really differ
    other = names[::-1]  # the next batch routes its rows otherwise: nothing of the last batch's routing stays
    with torch.no_grad():
        ours_again = model(input_ids=ids, adapter_names=other).logits
        monkeypatch.undo()
        shared_a.disable(model)
        peft_again = model(input_ids=ids, adapter_names=other).logits
    assert torch.allclose(ours_again, peft_again, atol=1e-5)


def test_adapters_with_different_a_are_refused_by_the_shared_path(tiny_llama_dir, tmp_path):
    model = on_one_model(tiny_llama_dir, save_adapters(tiny_llama_dir, tmp_path, seeds=[0, 1]))
    with pytest.raises(ValueError, match="not one family"):
        shared_a.enable(model, ["a0", "a1"])


@pytest.fixture(scope="module")
def two_runs(tiny_llama_dir, tmp_path_factory):
    """Two B-only runs of one family, on different data; and a LoRA run."""
    folder = tmp_path_factory.mktemp("mixed")
    refs = {}
    for label, adapter in (("one", {}), ("two", {}),
                           ("lora", {"A": {"init": "kaiming_uniform", "trainable": True}})):
        recipe = sft_recipe(tiny_llama_dir, write_jsonl(folder / f"{label}.jsonl", alpaca_rows(20, seed=len(refs))),
                            **adapter)
        recipe["name"] = label
        recipe["train"].update({"max_steps": 6, "learning_rate": 0.05})
        (folder / f"{label}.yaml").write_text(yaml.safe_dump(recipe))
        assert CliRunner().invoke(main, ["train", str(folder / f"{label}.yaml"), "--output-dir",
                                         str(folder / "runs")]).exit_code == 0
        refs[label] = str(resolve([str(folder / "runs" / label)])[0].path)
    return refs, folder


@pytest.mark.slow
@pytest.mark.parametrize("pair", [("one", "two"), ("one", "lora")])
def test_predict_with_several_runs_answers_each_row_as_its_run_alone(two_runs, tmp_path, pair):
    refs, folder = two_runs
    rows = [{**row, "adapter": pair[i % 2]} for i, row in enumerate(alpaca_rows(6, seed=5))]
    write_jsonl(tmp_path / "mixed.jsonl", rows)
    result = CliRunner().invoke(main, ["predict", refs[pair[0]], refs[pair[1]], "--input",
                                       str(tmp_path / "mixed.jsonl"), "--output", str(tmp_path / "out.jsonl"),
                                       "--max-new-tokens", "6", "--batch-size", "6", "--output-dir",
                                       str(folder / "runs")])
    assert result.exit_code == 0, result.output
    assert ("one shared A" in result.output) == (pair == ("one", "two"))
    mixed = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for name in pair:
        own = [{k: v for k, v in row.items() if k != "adapter"} for row in rows if row["adapter"] == name]
        write_jsonl(tmp_path / f"{name}.jsonl", own)
        single = CliRunner().invoke(main, ["predict", refs[name], "--input", str(tmp_path / f"{name}.jsonl"),
                                           "--output", str(tmp_path / f"{name}.out.jsonl"), "--no-merge",
                                           "--max-new-tokens", "6", "--batch-size", "3"])
        assert single.exit_code == 0, single.output
        lines = (tmp_path / f"{name}.out.jsonl").read_text().splitlines()
        expected = [json.loads(line)["completion"] for line in lines]
        assert [row["completion"] for row in mixed if row["adapter"] == refs[name]] == expected


@pytest.mark.slow
@pytest.mark.parametrize(("rows", "message"), [
    ([{"instruction": "what", "input": "", "output": "a", "adapter": "three"}], "adapter 'three' is none of the runs"),
    ([{"instruction": "what", "input": "", "output": "a"}], "no 'adapter' column"),
])
def test_predict_with_several_runs_refuses_rows_that_name_no_run(two_runs, tmp_path, rows, message):
    refs, folder = two_runs
    write_jsonl(tmp_path / "bad.jsonl", rows)
    result = CliRunner().invoke(main, ["predict", refs["one"], refs["two"], "--input", str(tmp_path / "bad.jsonl"),
                                       "--output-dir", str(folder / "runs")])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.slow
def test_serving_several_runs_answers_each_model_id_as_its_run_alone(two_runs, tmp_path):
    from openai import NotFoundError, OpenAI

    from asymtune.inference import mixed, serve
    from asymtune.inference.generate import answers
    from asymtune.inference.sampling import Sampling

    refs, folder = two_runs
    adapters = mixed.open_adapters([refs["one"], refs["two"]], folder / "runs", tmp_path, log=lambda _: None)
    with serving(serve.build_app(mixed.as_models(adapters))) as url:
        client = OpenAI(base_url=url, api_key="unused")
        assert sorted(m.id for m in client.models.list().data) == ["one", "two"]
        question = "what does the building committee grant"
        replies = {}
        for name in ("one", "two", "one"):  # back and forth: each request is routed to the adapter it names
            reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": question}],
                                                   max_tokens=6, temperature=0)
            replies.setdefault(name, []).append(reply.choices[0].message.content.strip())
        for name in ("one", "two"):
            alone = answers([refs[name]], None, [question], folder / "runs", Sampling(6), merge=False,
                            log=lambda _: None)
            assert set(replies[name]) == {next(iter(alone.by_model.values())).texts[0].strip()}
        assert replies["one"][0] != replies["two"][0]
        with pytest.raises(NotFoundError):
            client.chat.completions.create(model="three", messages=[{"role": "user", "content": question}])


@pytest.mark.slow
def test_generate_together_gives_each_run_the_answers_it_gives_alone(two_runs):
    from asymtune.inference.generate import answers
    from asymtune.inference.sampling import Sampling

    refs, folder = two_runs
    prompts = ["what is a building permit", "who pays the contractor insurance", "how long does it take"]
    pair = [refs["one"], refs["lora"]]  # not one family: PEFT's mixed batch serves them
    together = answers(pair, None, prompts, folder / "runs", Sampling(6), batch_size=4, together=True,
                       log=lambda _: None)
    alone = answers(pair, None, prompts, folder / "runs", Sampling(6), merge=False, batch_size=3, log=lambda _: None)
    assert list(together.by_model) == ["one", "lora"]
    assert [c.texts for c in together.by_model.values()] == [c.texts for c in alone.by_model.values()]
