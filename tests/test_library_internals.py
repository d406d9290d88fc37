"""Every private attribute asymtune touches exists in the installed releases and means what asymtune takes it to mean;
a missing one is reported naming the library, the attribute and the releases it was written for."""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from asymtune import library_internals
from asymtune.library_internals import INTERNALS, Internal, LibraryChanged


def test_a_removed_attribute_is_reported_by_library_attribute_and_tested_releases():
    gone = Internal("transformers", "Trainer", "_no_such_thing", "5.0–5.25", "a test")
    from importlib.metadata import version

    with pytest.raises(LibraryChanged, match=rf"transformers {version('transformers')} has no "
                                             r"Trainer\._no_such_thing.*written for transformers 5\.0–5\.25"):
        gone.require(Trainer)


@pytest.mark.slow
def test_every_internal_exists_and_the_loss_sum_is_the_sum_of_the_logged_step_losses(tiny_llama, tmp_path):
    rows = Dataset.from_dict({"input_ids": [[1, 5, 9, 12, 7, 3]] * 12, "labels": [[1, 5, 9, 12, 7, 3]] * 12})
    sums: list[float] = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sums.append(library_internals.loss_sum(trainer))

    args = TrainingArguments(str(tmp_path), max_steps=4, per_device_train_batch_size=3, logging_steps=3,
                             learning_rate=0.01, report_to=[], use_cpu=True, save_strategy="no")
    trainer = Trainer(tiny_llama, args, train_dataset=rows, eval_dataset=rows, callbacks=[Probe()])
    trainer.evaluate()
    assert getattr(trainer.model, library_internals.PREPARED_MARK.attribute) is True  # what an evaluation leaves
    library_internals.forget_evaluation_prepare(trainer)
    assert trainer.model not in trainer.accelerator._models
    result = trainer.train()
    assert result.training_loss == pytest.approx(sums[-1] / 4, rel=1e-6)  # steps 1-3 logged, step 4 pending
    assert sums == sorted(sums) and sums[0] > 0
    for internal in INTERNALS:
        holder = {"Trainer": trainer, "Module": trainer.model}[internal.owner]
        internal.require(holder)  # raises LibraryChanged, naming it, on a release without it
    weight = trainer.model.model.layers[0].mlp.down_proj.weight
    trained = weight.detach().clone()
    trainer.save_model(str(tmp_path / "saved"))
    with torch.no_grad():
        weight.zero_()
    library_internals.load_checkpoint_weights(trainer, str(tmp_path / "saved"))
    assert torch.equal(trainer.model.model.layers[0].mlp.down_proj.weight, trained)
