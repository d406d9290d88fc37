"""The GLUE tasks: input columns, label count, validation splits, metrics and the headline metric.

Headline metrics follow the paper's Table 1: Matthews correlation for CoLA, Pearson for STS-B,
accuracy elsewhere; MNLI's is the accuracy over matched and mismatched validation sets together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from asymtune.evaluation import metrics as m

Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class GlueTask:
    name: str
    text_fields: tuple[str, ...]
    num_labels: int  # 1 = regression
    eval_splits: tuple[str, ...]
    metrics: dict[str, Metric]
    headline: str  # which metric is the task's Table 1 score

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


ACC = {"accuracy": m.accuracy}
GLUE = {
    task.name: task
    for task in (
        GlueTask("cola", ("sentence",), 2, ("validation",), {"matthews": m.matthews, **ACC}, "matthews"),
        GlueTask("sst2", ("sentence",), 2, ("validation",), ACC, "accuracy"),
        GlueTask("mrpc", ("sentence1", "sentence2"), 2, ("validation",), {**ACC, "f1": m.binary_f1}, "accuracy"),
        GlueTask("qqp", ("question1", "question2"), 2, ("validation",), {**ACC, "f1": m.binary_f1}, "accuracy"),
        GlueTask("stsb", ("sentence1", "sentence2"), 1, ("validation",),
                 {"pearson": m.pearson, "spearman": m.spearman}, "pearson"),
        GlueTask("mnli", ("premise", "hypothesis"), 3, ("validation_matched", "validation_mismatched"), ACC,
                 "accuracy"),
        GlueTask("qnli", ("question", "sentence"), 2, ("validation",), ACC, "accuracy"),
        GlueTask("rte", ("sentence1", "sentence2"), 2, ("validation",), ACC, "accuracy"),
        GlueTask("wnli", ("sentence1", "sentence2"), 2, ("validation",), ACC, "accuracy"),
    )
}
GLUE_HUB_ID = "nyu-mll/glue"
