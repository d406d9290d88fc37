"""predict, generate, chat and serve: answers equal to plain transformers/PEFT and to training's own numbers."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from conftest import serving, write_jsonl
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForCausalLM

from asymtune.cli import main
from asymtune.data.formats import alpaca_prompt, to_prompt_completion
from asymtune.inference import causal, generate, loading, prompts
from asymtune.inference.sampling import Sampling

pytestmark = pytest.mark.slow

QUESTIONS = ["name the colour of the sky", "list three fruits"]
NEW_TOKENS = 12


def peft_greedy(model_dir, adapter_dir, question):
    """Reference: plain transformers greedy `generate` on PeftModel.from_pretrained, the Alpaca prompt as text."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(model_dir), str(adapter_dir)).eval()
    ids = tokenizer(alpaca_prompt(question), return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, ids.shape[1]:].tolist(), tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def answers_of(ref, root, merge=True, **sampling):
    made = generate.answers([str(ref)], None, QUESTIONS, root, Sampling(NEW_TOKENS, **sampling), merge=merge,
                            batch_size=2, log=lambda _: None)
    [completions] = made.by_model.values()
    return completions


@pytest.mark.parametrize("merge", [True, False])
def test_greedy_generate_equals_peft_generate_token_for_token(sft_run, tiny_llama_dir, merge):
    completions = answers_of(sft_run.path, sft_run.path.parent, merge)
    for question, ids, text in zip(QUESTIONS, completions.token_ids, completions.texts, strict=True):
        assert (ids, text) == peft_greedy(tiny_llama_dir, sft_run.adapter_dir, question)
    base = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    plain = tokenizer(alpaca_prompt(QUESTIONS[0]), return_tensors="pt").input_ids
    untrained = base.generate(plain, attention_mask=torch.ones_like(plain), max_new_tokens=NEW_TOKENS, do_sample=False)
    assert untrained[0, plain.shape[1]:].tolist() != completions.token_ids[0]  # the adapter is really applied


def test_merged_and_unmerged_logits_agree(sft_run, tmp_path):
    trained = loading.locate(str(sft_run.path), sft_run.path.parent, tmp_path)
    merged, tokenizer = loading.load(trained, merge=True, device="cpu")
    unmerged, _ = loading.load(trained, merge=False, device="cpu")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert any("lora" in name for name, _ in unmerged.named_parameters())
    ids = torch.tensor([tokenizer(alpaca_prompt(q))["input_ids"][:20] for q in QUESTIONS])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_prompt_ids_are_the_prompt_tokens_sftrainer_trained_on(sft_run, tiny_llama_dir, tmp_path):
    """An alpaca question's prompt ids equal the part of TRL's tokenized training row that the loss skips; the served
    chat template renders one user turn as the same text."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    rows = [{"instruction": q, "input": "", "output": "blue"} for q in QUESTIONS]
    table = to_prompt_completion(datasets.Dataset.from_list(rows), "alpaca", "rows")
    trainer = SFTTrainer(model=LlamaForCausalLM.from_pretrained(tiny_llama_dir), train_dataset=table,
                         processing_class=AutoTokenizer.from_pretrained(tiny_llama_dir),
                         args=SFTConfig(output_dir=str(tmp_path), report_to=[], max_length=128, bf16=False))
    model = causal.open_run(str(sft_run.path), sft_run.path.parent, tmp_path, log=lambda _: None)
    assert model.style == "alpaca"
    for question, example in zip(QUESTIONS, trainer.train_dataset, strict=True):
        prompt_length = next(i for i, label in enumerate(example["labels"]) if label != -100)  # loss starts here
        assert model.prompt_ids([{"role": "user", "content": question}], 8, "q") == \
            example["input_ids"][:prompt_length]
        served = model.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                     chat_template=prompts.alpaca_chat_template(),
                                                     add_generation_prompt=True)
        assert served == alpaca_prompt(question)


def test_exports_answer_like_the_run(sft_run, tmp_path):
    runner = CliRunner()
    expected = answers_of(sft_run.path, sft_run.path.parent).token_ids
    for form in ("compact", "peft", "merged"):
        target = tmp_path / form
        result = runner.invoke(main, ["export", str(sft_run.path), f"--{form}", str(target)])
        assert result.exit_code == 0, result.output
        assert (target / "asymtune_recipe.yaml").is_file()
        assert answers_of(target, tmp_path).token_ids == expected, form
    rebuilt = tmp_path / "peft-again"
    assert runner.invoke(main, ["export", str(tmp_path / "compact"), "--peft", str(rebuilt)]).exit_code == 0
    assert answers_of(rebuilt, tmp_path).token_ids == expected


def test_sampling_is_seeded_and_differs_from_greedy(sft_run):
    first = answers_of(sft_run.path, sft_run.path.parent, temperature=1.5, seed=3)
    again = answers_of(sft_run.path, sft_run.path.parent, temperature=1.5, seed=3)
    greedy = answers_of(sft_run.path, sft_run.path.parent)
    assert first.token_ids == again.token_ids != greedy.token_ids


def test_generate_cli_shows_runs_and_base_side_by_side(sft_run, tiny_llama_dir):
    result = CliRunner().invoke(main, [
        "generate", str(sft_run.path), "--base", str(tiny_llama_dir), "--prompt", QUESTIONS[0],
        "--max-new-tokens", str(NEW_TOKENS), "--template", "alpaca"])
    assert result.exit_code == 0, result.output
    assert "tiny-sft" in result.output and sft_run.path.name in result.output and "base" in result.output


def test_predict_completes_alpaca_rows_like_generate(sft_run, tmp_path):
    rows = [{"instruction": q, "input": "", "output": "x"} for q in QUESTIONS]
    source = write_jsonl(tmp_path / "questions.jsonl", rows)
    result = CliRunner().invoke(main, ["predict", str(sft_run.path), "--input", str(source), "--output",
                                       str(tmp_path / "out.jsonl"), "--max-new-tokens", str(NEW_TOKENS)])
    assert result.exit_code == 0, result.output
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["completion"] for row in written] == answers_of(sft_run.path, sft_run.path.parent).texts
    assert [row["reference"] for row in written] == ["x", "x"]


def test_chat_under_a_pipe_streams_keeps_history_and_resets(sft_run):
    lines = f"{QUESTIONS[0]}\n/reset\n{QUESTIONS[0]}\n/nonsense\n/exit\nnever read\n"
    result = CliRunner().invoke(main, ["chat", str(sft_run.path), "--max-new-tokens", str(NEW_TOKENS)], input=lines)
    assert result.exit_code == 0, result.output
    [first] = answers_of(sft_run.path, sft_run.path.parent).texts[:1]
    assert result.output.count(first.strip()) == 2  # the same answer before and after /reset
    assert "conversation forgotten" in result.output and "unknown command /nonsense" in result.output
    assert "tokens/s" in result.output


def test_chat_history_reaches_the_prompt(sft_run, tmp_path):
    from asymtune.inference.chat import converse

    model = causal.open_run(str(sft_run.path), sft_run.path.parent, tmp_path, log=lambda _: None)
    seen = []
    original = model.prompt_ids
    model.prompt_ids = lambda conversation, *args: seen.append(list(conversation)) or original(conversation, *args)
    turns = converse(model, Sampling(4), ["hello", "again"], lambda _: None, lambda _: None)
    assert [m["content"] for m in seen[1]] == ["hello", turns[0].text, "again"]


@pytest.fixture
def served(sft_run, tmp_path):
    """The run behind transformers' server on a loopback port, through `serve.build_app`."""
    from asymtune.inference import serve

    model = causal.open_run(str(sft_run.path), sft_run.path.parent, tmp_path, log=lambda _: None)
    with serving(serve.build_app({"tiny": model})) as url:
        yield url


def test_served_answers_through_the_openai_client_equal_generate(served, sft_run):
    from openai import OpenAI

    client = OpenAI(base_url=served, api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    expected = answers_of(sft_run.path, sft_run.path.parent).texts[0]
    assert expected.strip()
    question = [{"role": "user", "content": QUESTIONS[0]}]
    reply = client.chat.completions.create(model="tiny", messages=question, max_tokens=NEW_TOKENS, temperature=0)
    assert reply.choices[0].message.content.strip() == expected.strip()
    pieces = client.chat.completions.create(model="tiny", messages=question, max_tokens=NEW_TOKENS, temperature=0,
                                            stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in pieces if chunk.choices)
    assert streamed.strip() == expected.strip()
    completion = client.completions.create(model="tiny", prompt=alpaca_prompt(QUESTIONS[0]), max_tokens=NEW_TOKENS,
                                           temperature=0)
    assert completion.choices[0].text.strip() == expected.strip()


def test_bad_sources_and_inputs_exit_2_with_one_message(sft_run, tiny_llama_dir, tmp_path):
    runner = CliRunner()
    no_adapter = tmp_path / "runs" / "tiny-sft" / sft_run.path.name
    shutil.copytree(sft_run.path, no_adapter)
    shutil.rmtree(no_adapter / "adapter")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "empty.jsonl").write_text("")
    long_prompt = "word " * 5000
    cases = {
        "no adapter": (["generate", str(no_adapter), "--prompt", "hi"], "nothing trained to load"),
        "empty prompts file": (["generate", str(sft_run.path), "--input", str(tmp_path / "empty.txt")],
                               "holds no prompt"),
        "empty predict input": (["predict", str(sft_run.path), "--input", str(tmp_path / "empty.jsonl")],
                                "empty.jsonl"),
        "missing input": (["predict", str(sft_run.path), "--input", str(tmp_path / "nope.jsonl")],
                          "no such file"),
        "too long": (["generate", str(sft_run.path), "--prompt", long_prompt], "exceeds the model's context"),
        "no run": (["chat", "nothing-by-this-name", "--output-dir", str(tmp_path)], "nothing-by-this-name"),
        "bare model folder": (["chat", str(tiny_llama_dir)], "--base"),
        "run and base": (["chat", str(sft_run.path), "--base", str(tiny_llama_dir)], "one run"),
        "bad output suffix": (["predict", str(sft_run.path), "--input", str(sft_run.path / "recipe.yaml"),
                               "--output", str(tmp_path / "x.txt")], "write .jsonl or .csv"),
    }
    for case, (argv, message) in cases.items():
        result = runner.invoke(main, argv)
        assert result.exit_code == 2, (case, result.output)
        assert message in result.output, (case, result.output)
        assert "Traceback" not in result.output, case
