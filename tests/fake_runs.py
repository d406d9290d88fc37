"""Run directories as `asymtune train` leaves them (recipe, status, metrics, step log), written without training."""

import json
import math

import yaml

from asymtune.runs import RunDir

FACTORS = {  # compare.method_name of each
    "B-only": ({"init": "orthogonal", "trainable": False}, {"init": "zero", "trainable": True}),
    "A-only": ({"init": "zero", "trainable": True}, {"init": "orthogonal", "trainable": False}),
    "LoRA": ({"init": "kaiming_uniform", "trainable": True}, {"init": "zero", "trainable": True}),
}


def fake_run(root, name, seed=0, rank=8, method="B-only", status="completed", metrics=None, losses=(), task="sft",
             eval_losses=None):
    """A run of `method` at `rank`; `losses` are the logged training losses at steps 1, 2, ...; `metrics` go to
    metrics.json (completed runs); `eval_losses` {step: loss} are logged evaluations."""
    run = RunDir.create(root, name)
    a, b = FACTORS[method]
    recipe = {
        "name": name, "task": task, "seed": seed, "model": {"name": "m"},
        "data": {"train": "d.jsonl", "format": "alpaca"} if task == "sft" else
                {"train": "digits", "train_envs": ["rot0"], "eval_fraction": 0.2} if task == "image" else
                {"train": "d.jsonl", "text_fields": ["text"]},
        "adapter": {"rank": rank, "targets": ["q_proj"], "seed": seed, "A": a, "B": b},
    }
    (run.path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run.set_status(status)
    (run.path / "env.json").write_text(json.dumps({"python": "3.11.7", "device": "cpu", "host": "h", "git_commit": "c0",
                                                   "versions": {"asymtune": "0.1.0", "transformers": "5.0.test"}}))
    for step, loss in enumerate(losses, start=1):
        run.append_log({"step": step, "epoch": step / 10, "time": 1.0 * step, "loss": loss, "learning_rate": 1e-3})
    for step, loss in (eval_losses or {}).items():
        run.append_log({"step": step, "epoch": step / 10, "time": 1.0 * step, "eval_loss": loss})
    if status == "completed":
        run.write_metrics({"train_steps": len(losses), **(metrics or {}),
                           "parameters": {"trainable": 64 * rank, "trainable_percent": 0.1 * rank}})
    return run


def decaying(start, seed, steps=20, noise=0.03):
    """A training-loss curve that decays from `start`, wobbling per seed."""
    return [start * (0.6 + 0.4 * math.exp(-step / 6)) + noise * math.sin(step * (seed + 1.3)) for step in range(steps)]


def write_torn_line(run):
    with run.log_file.open("a") as handle:
        handle.write(json.dumps({"step": 99, "loss": 1.0})[:10])
