"""Train / held-out evaluation splits, from a separate source or a seeded fraction of train."""

from __future__ import annotations

import datasets

from asymtune.data.sources import DataError


def train_eval_split(
    train: datasets.Dataset,
    held_out: datasets.Dataset | None,
    eval_fraction: float,
    seed: int,
    max_train: int | None = None,
    max_eval: int | None = None,
    stratify_by: str | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, eval): `held_out` if given, else a seeded `eval_fraction` of train, else no eval set.

    `max_train` / `max_eval` keep the first N rows after the split (deterministic for a seed);
    `stratify_by` (a ClassLabel column) keeps each class's share equal in both parts.
    """
    if held_out is None and eval_fraction > 0:
        if round(len(train) * eval_fraction) < 1:
            raise DataError(
                f"data.eval_fraction {eval_fraction} of {len(train)} rows leaves no evaluation rows"
            )
        parts = train.train_test_split(test_size=eval_fraction, seed=seed, shuffle=True, stratify_by_column=stratify_by)
        train, held_out = parts["train"], parts["test"]
    if max_train is not None:
        train = train.select(range(min(max_train, len(train))))
    if held_out is not None and max_eval is not None:
        held_out = held_out.select(range(min(max_eval, len(held_out))))
    return train, held_out
