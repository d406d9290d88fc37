"""Never lose work: checkpoints marked complete, SIGKILL mid-run then --resume ends where an uninterrupted
run ends, SIGTERM writes a checkpoint first, half-written checkpoints are skipped."""

import json
import platform
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import corpus, sft_recipe, write_jsonl
from safetensors.torch import load_file

from asymtune.checkpoints import MARKER, newest_complete
from asymtune.cli import main
from asymtune.runs import RunDir, resolve


def start_training(recipe_file, output_dir) -> subprocess.Popen:
    command = [sys.executable, "-m", "asymtune.cli", "train", str(recipe_file), "--output-dir", str(output_dir)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pattern_root, pattern: str, process: subprocess.Popen, timeout: float = 180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(pattern_root.glob(pattern))
        if found:
            return found[0]
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.02)
    raise AssertionError(f"{pattern} did not appear in {timeout}s")


def resume(run_path) -> "CliRunner.Result":
    return CliRunner().invoke(main, ["train", "--resume", str(run_path)])


def adapter_weights(run: RunDir) -> dict:
    return load_file(run.adapter_dir / "adapter_model.safetensors")


@pytest.fixture
def resumable_recipe(tiny_llama_dir, alpaca_file, write_recipe):
    """B-only with adapter dropout (so the RNG state matters), a checkpoint every 4 of 48 steps."""
    recipe = sft_recipe(tiny_llama_dir, alpaca_file, dropout=0.1)
    recipe["train"].update(max_steps=48, save_steps=4, batch_size=2)
    return write_recipe(recipe)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["b-only", "packed-loraplus-mix"])
def test_sigkill_then_resume_ends_with_the_adapter_and_metrics_of_an_uninterrupted_run(
    resumable_recipe, tmp_path, variant
):
    if variant == "packed-loraplus-mix":  # packed batches of two weighted sources, both factors at own rates (LoRA+)
        document = yaml.safe_load(resumable_recipe.read_text())
        texts = corpus(40, seed=7)
        chat = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": texts[2 * i], "completion": texts[2 * i + 1]}
                                                     for i in range(20)])
        document["data"]["train"] = [{"train": document["data"]["train"]},
                                     {"train": str(chat), "format": "prompt_completion", "weight": 2.0}]
        document["data"]["packing"] = True
        document["adapter"].update(A={"init": "kaiming_uniform", "trainable": True, "learning_rate": 5e-3},
                                   B={"init": "zero", "trainable": True}, lr_ratio=4)
        resumable_recipe.write_text(yaml.safe_dump(document))
    reference = CliRunner().invoke(main, ["train", str(resumable_recipe), "--output-dir", str(tmp_path / "whole")])
    assert reference.exit_code == 0, reference.output
    [whole] = resolve([str(tmp_path / "whole")])

    process = start_training(resumable_recipe, tmp_path / "killed")
    marker = wait_for(tmp_path / "killed", f"*/*/checkpoints/checkpoint-8/{MARKER}", process)
    process.kill()
    process.communicate()
    run = RunDir(marker.parents[2])
    assert run.status == "running" and not (run.path / "metrics.json").exists()  # SIGKILL: nothing more written
    half_written = run.path / "checkpoints" / "checkpoint-1000"
    half_written.mkdir()
    (half_written / "adapter_model.safetensors").write_bytes(b"\0" * 100)

    result = resume(run.path)
    assert result.exit_code == 0, result.output
    assert "skipping" in result.output and "checkpoint-1000" in result.output and "incomplete" in result.output
    assert run.status == "completed"
    resumed_weights, whole_weights = adapter_weights(run), adapter_weights(whole)
    assert resumed_weights.keys() == whole_weights.keys()
    assert max((resumed_weights[k] - whole_weights[k]).abs().max().item() for k in whole_weights) <= 1e-6
    assert any(w.abs().sum() > 0 for k, w in whole_weights.items() if "lora_B" in k)  # it did train
    resumed_metrics, whole_metrics = run.read_json("metrics.json"), whole.read_json("metrics.json")
    for key in ("eval_loss", "eval_loss_before", "train_loss", "train_steps"):
        assert resumed_metrics[key] == pytest.approx(whole_metrics[key], rel=1e-6, abs=1e-7), key
    events = [json.loads(line) for line in run.log_file.read_text().splitlines()]
    [resumed_at] = [i for i, e in enumerate(events) if e.get("event") == "resumed"]
    from_step = events[resumed_at]["from_step"]
    assert from_step >= 8 and f"resuming from checkpoint-{from_step}" in result.output
    steps_after = [e["step"] for e in events[resumed_at:] if "loss" in e]
    assert steps_after[0] == from_step + 1 and steps_after[-1] == 48  # continued, not restarted


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_marks_interrupted_and_the_run_resumes(resumable_recipe, tmp_path):
    process = start_training(resumable_recipe, tmp_path / "runs")
    wait_for(tmp_path / "runs", f"*/*/checkpoints/checkpoint-4/{MARKER}", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    [run] = resolve([str(tmp_path / "runs")])
    status = run.read_json("status.json")
    assert status["status"] == "interrupted" and "asymtune train --resume" in stderr
    stopped = newest_complete(run.path / "checkpoints", warn=pytest.fail)
    assert stopped.step == status["step"] >= 4  # the checkpoint written on the way out
    result = resume(run.path)
    assert result.exit_code == 0, result.output
    assert f"resuming from checkpoint-{stopped.step}" in result.output and run.status == "completed"
    assert run.read_json("metrics.json")["train_steps"] == 48


def test_resume_refuses_completed_runs_and_a_recipe_beside_it(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    recipe_file = write_recipe(sft_recipe(tiny_llama_dir, alpaca_file))
    assert CliRunner().invoke(main, ["train", str(recipe_file), "--output-dir", str(tmp_path)]).exit_code == 0
    [run] = resolve([str(tmp_path)])
    assert newest_complete(run.path / "checkpoints", warn=pytest.fail).step == 4  # the checkpoint at the end
    result = resume(run.path)
    assert result.exit_code == 2 and "already completed" in result.output
    result = CliRunner().invoke(main, ["train", str(recipe_file), "--resume", str(run.path)])
    assert result.exit_code == 2 and "drop RECIPE_FILE" in result.output
    result = resume(tmp_path / "nowhere")
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_resume_refuses_a_run_a_live_process_is_training(tmp_path):
    run = RunDir.create(tmp_path, "busy")
    (run.path / "recipe.yaml").write_text("name: busy\n")
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.set_status("running", pid=trainer.pid, host=platform.node())
        result = resume(run.path)
        assert result.exit_code == 2 and f"still being trained by process {trainer.pid}" in result.output
    finally:
        trainer.kill()
        trainer.wait()


def write_checkpoint(folder, step: int, marker_step: int | None = None) -> None:
    """What the Trainer and MarkCheckpointComplete write: weights, optimizer, scheduler, RNG, states, marker."""
    from safetensors.torch import save_file

    folder.mkdir()
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": {}}, folder / name)
    save_file({"w": torch.zeros(2)}, folder / "adapter_model.safetensors")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / MARKER).write_text(json.dumps({"step": marker_step or step, "loss_sum": float(step)}))


def test_resume_skips_a_marked_checkpoint_whose_state_is_damaged(tmp_path):
    for step in (2, 4, 6):
        write_checkpoint(tmp_path / f"checkpoint-{step}", step)
    (tmp_path / "checkpoint-6" / "optimizer.pt").write_bytes(b"garbage")
    (tmp_path / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad")
    warnings = []
    found = newest_complete(tmp_path, warnings.append)
    assert found.step == 2 and found.loss_sum == 2.0
    assert "optimizer.pt is not a torch archive" in warnings[0] and "does not parse" in warnings[1]
    (tmp_path / "checkpoint-2" / MARKER).write_text("{not json")
    assert newest_complete(tmp_path, warnings.append) is None
    assert f"{MARKER} or trainer_state.json is not JSON" in warnings[-1]


@pytest.mark.parametrize("damage, message", [
    ("optimizer.pt", "its optimizer state is missing"),  # would resume with a fresh optimizer
    ("scheduler.pt", "scheduler.pt is missing"),
    ("rng_state.pth", "its RNG state is missing"),
    ("adapter_model.safetensors", "no weights"),
    ("trainer_state.json", "no trainer_state.json"),
    ("renamed", "its folder says step 99999999999999999999"),  # gave train_loss -9.9e29
])
def test_a_checkpoint_missing_a_piece_or_naming_another_step_is_not_resumed_from(tmp_path, damage, message):
    write_checkpoint(tmp_path / "checkpoint-2", 2)
    if damage == "renamed":
        write_checkpoint(tmp_path / "checkpoint-99999999999999999999", 2)
    else:
        write_checkpoint(tmp_path / "checkpoint-4", 4)
        (tmp_path / "checkpoint-4" / damage).unlink()
    warnings = []
    assert newest_complete(tmp_path, warnings.append).step == 2
    assert len(warnings) == 1 and message in warnings[0], warnings


@pytest.mark.slow
def test_a_run_stopped_after_its_adapter_was_saved_resumes_to_the_same_adapter(
    tiny_llama_dir, alpaca_file, write_recipe, tmp_path, monkeypatch
):
    """A signal in the final evaluation (after the last checkpoint and the adapter were written): the status
    records the step to resume from; --resume takes no extra step, replaces the adapter in one move and
    removes what the stopped process left half-written."""
    from asymtune.tasks.sft import FAMILY

    recipe = sft_recipe(tiny_llama_dir, alpaca_file)
    recipe["train"].update(max_steps=4, save_steps=2, lr_scheduler="constant")  # an extra step would show
    recipe_file = write_recipe(recipe)
    with monkeypatch.context() as patched:
        def signal_in_final_evaluation(*args, **kwargs):
            raise KeyboardInterrupt
        patched.setattr(type(FAMILY), "metrics", signal_in_final_evaluation)
        stopped = CliRunner().invoke(main, ["train", str(recipe_file), "--output-dir", str(tmp_path / "runs")])
    assert stopped.exit_code == 130, stopped.output
    [run] = resolve([str(tmp_path / "runs")])
    assert run.read_json("status.json") == {**run.read_json("status.json"), "status": "interrupted", "step": 4}
    saved = adapter_weights(run)
    (run.path / ".adapter.x1y2z3.tmp").mkdir()  # a save cut off mid-way by a kill
    (run.path / ".adapter.x1y2z3.tmp" / "adapter_model.safetensors").write_bytes(b"\0" * 10)

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run.set_status("running", pid=gone.pid, host=platform.node())  # as if then killed for memory: no final word

    result = resume(run.path)
    assert result.exit_code == 0, result.output
    assert "died without a final status" in result.output
    assert run.status == "completed" and run.read_json("metrics.json")["train_steps"] == 4
    assert "step 5" not in result.output
    assert not list(run.path.glob(".*.tmp"))
    resumed = adapter_weights(run)
    assert all(torch.equal(resumed[key], saved[key]) for key in saved)
    assert max(json.loads(line).get("step", 0) for line in run.log_file.read_text().splitlines()) == 4


@pytest.mark.slow
def test_two_resumes_of_one_run_at_once_one_trains_the_other_is_refused(resumable_recipe, tmp_path):
    process = start_training(resumable_recipe, tmp_path / "runs")
    wait_for(tmp_path / "runs", f"*/*/checkpoints/checkpoint-4/{MARKER}", process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    [run] = resolve([str(tmp_path / "runs")])
    command = [sys.executable, "-m", "asymtune.cli", "train", "--resume", str(run.path)]
    racers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((racer.wait(timeout=300), racer.communicate()[1]) for racer in racers)
    [(won, _), (lost, message)] = outcomes
    assert (won, lost) == (0, 2), outcomes
    assert "in use by process" in message and "(training)" in message
    assert run.status == "completed" and run.read_json("metrics.json")["train_steps"] == 48
