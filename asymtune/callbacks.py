"""Trainer callbacks shared by every task: a rich progress bar, the per-step JSONL log, time to first step."""

from __future__ import annotations

import math
import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback

from asymtune.report import console
from asymtune.runs import RunDir


class ProgressCallback(TrainerCallback):
    """A rich progress bar over optimizer steps showing the latest loss and learning rate, and one over
    the batches of each evaluation (inside the training display while training, on its own after)."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task = None
        self._eval_progress: Progress | None = None
        self._eval_task = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[unit]} {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("lr {task.fields[lr]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=state.max_steps, unit="step", loss="-", lr="-")

    def on_step_end(self, args, state, control, **kwargs):
        self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        fields = {}
        if "loss" in logs:
            fields["loss"] = f"{logs['loss']:.4f}"
        if "learning_rate" in logs:
            fields["lr"] = f"{logs['learning_rate']:.2e}"
        if fields and self._progress is not None:
            self._progress.update(self._task, **fields)
        if "eval_loss" in logs:
            console.print(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.stop()
        self._progress = None  # evaluations after training get a display of their own

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self._eval_progress is None:
            total = len(eval_dataloader) if eval_dataloader is not None else None
            if self._progress is not None:  # training: a row in its display
                self._eval_progress = self._progress
            else:
                self._eval_progress = Progress(
                    TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
                )
                self._eval_progress.start()
            self._eval_task = self._eval_progress.add_task("evaluate", total=total, unit="batch", loss="-", lr="-")
        self._eval_progress.advance(self._eval_task)

    def on_evaluate(self, args, state, control, **kwargs):
        self._end_evaluation()

    def on_predict(self, args, state, control, **kwargs):
        self._end_evaluation()

    def _end_evaluation(self) -> None:
        if self._eval_progress is None:
            return
        self._eval_progress.remove_task(self._eval_task)
        if self._eval_progress is not self._progress:
            self._eval_progress.stop()
        self._eval_progress = None


class StepLogCallback(TrainerCallback):
    """Append every Trainer log (loss, lr, eval loss, ...) as one JSON line to the run's log."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.run.append_log({"step": state.global_step, "epoch": state.epoch, "time": time.time(), **(logs or {})})


class TimeToFirstStepCallback(TrainerCallback):
    """Seconds from the start of the run to the end of the first optimizer step, minus excluded work."""

    def __init__(self, started: float, run: RunDir) -> None:
        self.started, self.run = started, run
        self.seconds: float | None = None

    def exclude(self, seconds: float) -> None:
        """Leave out work that is not start-up cost (the baseline evaluation)."""
        self.started += seconds

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.started
            console.print(f"time to first step: {self.seconds:.1f}s (model load, data prep, first step)")
            self.run.append_log({"event": "first_step", "time_to_first_step_s": self.seconds, "time": time.time()})


class NonFiniteLoss(Exception):
    """Training diverged: the logged loss is NaN or infinite."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(
            f"training loss became {loss} at step {step}; try a lower train.learning_rate or train.max_grad_norm, "
            "or model.dtype float32"
        )


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop at the first logged NaN/inf loss instead of training on garbage."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLoss(state.global_step, loss)


class TrainingInterrupted(Exception):
    """A signal stopped training after a checkpoint was written; the run can be resumed."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step} by a signal, after writing checkpoint-{step}")
        self.step = step


class GracefulStop(TrainerCallback):
    """SIGINT/SIGTERM during training: finish the current step, write a checkpoint, stop training.

    A second signal, or one outside the training loop, raises KeyboardInterrupt at once. `handle`
    is the signal handler; one instance per run (lifecycle.py installs it for the run's duration)."""

    def __init__(self) -> None:
        self.training = False
        self.requested = False

    def handle(self, signum, frame) -> None:
        if self.training and not self.requested:
            self.requested = True
            console.print("[yellow]stopping:[/yellow] writing a checkpoint after this step (signal again to stop now)")
            return
        raise KeyboardInterrupt

    def on_train_begin(self, args, state, control, **kwargs):
        self.training, self.requested = True, False

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

