"""The task families and what the rest of asymtune needs to know of each, without importing any of them.

Per task: the `data.*` keys only it reads, whether `data.eval` may name several sets, its built-in datasets,
the optional packages it needs at run time, and the metric keys that make a run's headline result. It imports
nothing of asymtune; the runner itself is `tasks.base.family(name)` (heavy imports).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    name: str
    data_keys: tuple[str, ...]  # data.* keys that belong to this task alone
    datasets: tuple[str, ...]  # built-in datasets, by the name a recipe gives them
    headline: tuple[str, ...]  # regexes over metric keys; the first that matches is the run's main result
    extras: tuple[tuple[str, str], ...] = ()  # (import name, asymtune extra) needed to run the task
    eval_mapping: bool = False  # data.eval may be {name: file, ...}


GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")
TASKS: dict[str, TaskInfo] = {
    info.name: info
    for info in (
        TaskInfo("sft", data_keys=("format", "packing"), datasets=(), headline=(r"^mmlu_average$", r"^eval_loss$")),
        TaskInfo("classification", data_keys=("glue_task", "text_fields"), datasets=GLUE_TASKS,
                 headline=(r"^glue_", r"^eval_validation_accuracy$"), eval_mapping=True),
        TaskInfo("seq2seq", data_keys=("summarization", "source_field", "target_field"),
                 datasets=("xsum", "cnn_dailymail"), headline=(r"_rouge1$",), extras=(("rouge_score", "seq2seq"),)),
        TaskInfo("image", data_keys=("train_envs", "class_map", "image_size"),
                 datasets=("rotated-digits", "coloured-digits"), headline=(r"_ood_acc$",),
                 extras=(("PIL", "vision"),)),
    )
}


def headline_metric(metrics: dict, task: str | None = None) -> tuple[str, float] | None:
    """The run's main result: the first of its task's headline metrics it has (any task's when unknown)."""
    patterns = TASKS[task].headline if task in TASKS else [p for info in TASKS.values() for p in info.headline]
    for pattern in patterns:
        for key, value in metrics.items():
            if re.search(pattern, key) and isinstance(value, (int, float)) and not isinstance(value, bool):
                return key, float(value)
    return None


def missing_extras(task: str) -> list[str]:
    """`pip install` hints for the optional packages `task` needs that are not installed."""
    import importlib.util

    return [f"{module} (pip install 'asymtune[{extra}]')" for module, extra in TASKS[task].extras
            if importlib.util.find_spec(module) is None]
