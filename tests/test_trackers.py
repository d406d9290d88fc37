"""train.report_to: each tracker's own reader gets back the loss the run logged, the config and the outcome."""

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import sft_recipe
from transformers import LlamaForCausalLM

from asymtune import trackers
from asymtune.cli import main
from asymtune.runs import resolve

pytestmark = pytest.mark.slow


def logged_losses(run) -> dict[int, float]:
    """step -> training loss, from the run's own logs/train.jsonl."""
    lines = [json.loads(line) for line in run.log_file.read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def wandb_records(path: Path) -> list:
    """The records of a wandb offline run file: LevelDB log framing (32 KiB blocks, 7-byte chunk headers) after
    wandb's 7-byte ':W&B' header, each record one of wandb's own `Record` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or (length == 0 and kind == 0):  # block padding
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def tracker_env(tmp_path: Path) -> dict[str, str]:
    """A user who configured no tracker: no wandb login, no MLflow server, trackio's store in tmp_path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WANDB_", "MLFLOW_", "TRACKIO_"))}
    (tmp_path / "home").mkdir(exist_ok=True)
    return {**env, "HOME": str(tmp_path / "home"), "TRACKIO_DIR": str(tmp_path / "trackio")}


def test_every_tracker_reads_back_the_logged_loss(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    recipe = sft_recipe(tiny_llama_dir, alpaca_file)
    recipe["train"]["report_to"] = ["tensorboard", "wandb", "mlflow", "trackio"]
    env = tracker_env(tmp_path)
    done = subprocess.run([sys.executable, "-m", "asymtune.cli", "train", str(write_recipe(recipe)), "--output-dir",
                           str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = resolve([str(tmp_path / "runs")])
    losses = logged_losses(run)
    assert sorted(losses) == [1, 2, 3, 4]
    metrics = run.read_json("metrics.json")
    trainable_b = metrics["parameters"]["trainable_B"]
    where = run.read_json("trackers.json")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(where["tensorboard"]["logdir"], size_guidance={"scalars": 0})
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(losses)
    assert events.Scalars("final/eval_loss")[-1].value == pytest.approx(metrics["eval_loss"])
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["method"].string_value == "B-only" and start.group_name == "tiny-sft"
    assert start.hparams["params.trainable_B"].number_value == trainable_b
    assert start.hparams["params.frozen_A"].number_value == metrics["parameters"]["frozen_A"] > 0
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # STATUS_SUCCESS

    from mlflow import MlflowClient

    assert where["mlflow"]["tracking_uri"] == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    client = MlflowClient(where["mlflow"]["tracking_uri"])
    mlflow_run = client.get_run(where["mlflow"]["run_id"])
    history = client.get_metric_history(mlflow_run.info.run_id, "loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses)
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == f"tiny-sft/{run.path.name}"
    assert mlflow_run.data.params["method"] == "B-only"
    assert mlflow_run.data.params["params.trainable_B"] == str(trainable_b)
    assert mlflow_run.data.params["adapter.A.trainable"] == "False"
    assert mlflow_run.data.metrics["final/eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert mlflow_run.data.tags["asymtune.run_dir"] == str(run.path.resolve())

    [wandb_file] = Path(where["wandb"]["dir"]).glob("run-*.wandb")
    assert where["wandb"]["mode"] == "offline" and Path(where["wandb"]["dir"]).is_relative_to(run.path)
    history, summary, kinds = {}, {}, {}
    for record in wandb_records(wandb_file):
        kind = record.WhichOneof("record_type")
        kinds[kind] = record
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            if "train/loss" in items:
                history[items["train/global_step"]] = items["train/loss"]
        if kind == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update})
    assert history == pytest.approx(losses)
    config = {item.key: json.loads(item.value_json) for item in kinds["run"].run.config.update}
    assert config["method"] == "B-only" and config["params.trainable_B"] == trainable_b
    assert kinds["run"].run.run_group == "tiny-sft" and list(kinds["run"].run.tags) == ["B-only", "sft"]
    assert summary["final/eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert kinds["exit"].exit.exit_code == 0

    read_trackio = ("import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
                    "print(json.dumps([S.get_logs(*sys.argv[1:]), S.get_run_config(*sys.argv[1:])]))")
    shown = subprocess.run([sys.executable, "-c", read_trackio, "asymtune", f"tiny-sft/{run.path.name}"], env=env,
                           capture_output=True, text=True, timeout=120, check=True)
    logs, trackio_config = json.loads(shown.stdout.splitlines()[-1])
    assert {log["train/global_step"]: log["train/loss"] for log in logs if "train/loss" in log} == pytest.approx(losses)
    assert [log["final/eval_loss"] for log in logs if "final/eval_loss" in log] == pytest.approx([metrics["eval_loss"]])
    assert trackio_config["method"] == "B-only" and trackio_config["params.trainable_B"] == trainable_b


def test_a_failed_run_ends_its_tracker_runs_failed(tiny_llama_dir, alpaca_file, write_recipe, tmp_path, monkeypatch):
    broken = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        broken.model.norm.weight[0] = float("nan")  # the loss is NaN from the first step
    broken.save_pretrained(tmp_path / "broken")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "broken" / name).write_bytes((tiny_llama_dir / name).read_bytes())
    recipe = sft_recipe(tmp_path / "broken", alpaca_file)
    recipe["train"]["report_to"] = ["tensorboard", "mlflow"]
    for key in [key for key in os.environ if key.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1, result.output
    [run] = resolve([str(tmp_path / "runs")])
    assert run.status == "failed"
    where = run.read_json("trackers.json")

    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    assert MlflowClient(where["mlflow"]["tracking_uri"]).get_run(where["mlflow"]["run_id"]).info.status == "FAILED"
    events = EventAccumulator(where["tensorboard"]["logdir"])
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    assert metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG]).status == 2  # FAILURE


def test_a_tracker_that_is_not_installed_is_named_before_anything_runs(
    tiny_llama_dir, alpaca_file, write_recipe, tmp_path, monkeypatch
):
    monkeypatch.setitem(trackers.NEEDS, "wandb", ("wandb", "asymtune_absent_module"))
    recipe = sft_recipe(tiny_llama_dir, alpaca_file)
    recipe["train"]["report_to"] = "wandb"  # one name is a one-item list
    path = write_recipe(recipe)
    result = CliRunner().invoke(main, ["train", str(path), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert f"{path}: train.report_to: wandb needs asymtune_absent_module (pip install 'asymtune[wandb]')" in \
        " ".join(result.output.split())
    assert not (tmp_path / "runs").exists()
    recipe["train"]["report_to"] = ["comet"]
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "train.report_to" in result.output and "'tensorboard'" in result.output


def test_a_resumed_run_continues_its_tracker_runs(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    import signal

    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from asymtune.checkpoints import MARKER

    recipe = sft_recipe(tiny_llama_dir, alpaca_file)
    recipe["train"].update(max_steps=48, save_steps=4, batch_size=2, report_to=["tensorboard", "mlflow"])
    env = tracker_env(tmp_path)
    command = [sys.executable, "-m", "asymtune.cli", "train", str(write_recipe(recipe)), "--output-dir",
               str(tmp_path / "runs")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not list((tmp_path / "runs").glob(f"*/*/checkpoints/checkpoint-4/{MARKER}")):
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 130
    [run] = resolve([str(tmp_path / "runs")])
    first = run.read_json("trackers.json")
    client = MlflowClient(first["mlflow"]["tracking_uri"])
    assert client.get_run(first["mlflow"]["run_id"]).info.status == "KILLED"
    done = subprocess.run([sys.executable, "-m", "asymtune.cli", "train", "--resume", str(run.path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert run.read_json("trackers.json")["mlflow"]["run_id"] == first["mlflow"]["run_id"]  # the same run
    losses = logged_losses(run)  # a step logged again after the resume keeps its last value
    assert sorted(losses) == list(range(1, 49))
    mlflow_run = client.get_run(first["mlflow"]["run_id"])
    assert mlflow_run.info.status == "FINISHED"
    assert {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, "loss")} == \
        pytest.approx(losses)
    events = EventAccumulator(first["tensorboard"]["logdir"], size_guidance={"scalars": 0})
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(losses)
