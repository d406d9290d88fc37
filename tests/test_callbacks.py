"""The progress display: evaluation batches are counted, inside the training bar while training."""

from transformers import TrainerControl, TrainerState, TrainingArguments

from asymtune.callbacks import ProgressCallback


def evaluate(callback, batches, args, state):
    for _ in batches:
        callback.on_prediction_step(args, state, TrainerControl(), eval_dataloader=batches)
    progress, task = callback._eval_progress, callback._eval_task
    counted = next(t for t in progress.tasks if t.id == task)
    callback.on_evaluate(args, state, TrainerControl())
    return progress, counted


def test_evaluation_batches_are_counted_alone_and_within_training(tmp_path):
    args, state = TrainingArguments(output_dir=str(tmp_path), report_to=[]), TrainerState(max_steps=4)
    callback = ProgressCallback()

    progress, counted = evaluate(callback, [1, 2, 3], args, state)
    assert (counted.completed, counted.total) == (3, 3) and not progress.live.is_started
    assert callback._eval_progress is None

    callback.on_train_begin(args, state, TrainerControl())
    progress, counted = evaluate(callback, [1, 2], args, state)
    assert progress is callback._progress and counted.description == "evaluate" and counted.completed == 2
    assert [t.description for t in callback._progress.tasks] == ["train"]  # the eval row is gone again
    training_display = callback._progress
    callback.on_train_end(args, state, TrainerControl())

    progress, counted = evaluate(callback, [1, 2, 3, 4], args, state)  # after training: a display of its own
    assert progress is not training_display and counted.completed == 4 and not progress.live.is_started
