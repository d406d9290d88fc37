import json

import pytest
from wheels import build_wheel

from asymtune import assets, atomic
from asymtune.runs import RunDir, RunDirError, resolve


def test_run_dirs_are_never_reused(tmp_path):
    first, second = RunDir.create(tmp_path, "x"), RunDir.create(tmp_path, "x")
    assert first.path != second.path and first.path.parent == tmp_path / "x"
    with pytest.raises(FileExistsError):
        first.path.mkdir(exist_ok=False)


def test_status_keeps_start_time_and_files_are_written_atomically(tmp_path):
    run = RunDir.create(tmp_path, "x")
    run.set_status("running")
    started = run.read_json("status.json")["started"]
    run.set_status("failed", error="boom")
    assert run.read_json("status.json") == {**run.read_json("status.json"), "status": "failed", "started": started}
    assert [p.name for p in run.path.iterdir()] == ["status.json"]  # no temp files left behind


def test_atomic_write_leaves_old_content_when_the_write_fails_midway(tmp_path):
    target = tmp_path / "metrics.json"
    atomic.write_json(target, {"a": 1})
    # The lone surrogate cannot be encoded, so the write fails after the text before it went out: a writer that
    # opened the target itself would have truncated it already.
    with pytest.raises(UnicodeEncodeError):
        atomic.write_text(target, '{"a": 2, "padding": "' + "x" * 100_000 + '\ud800"}')
    assert json.loads(target.read_text()) == {"a": 1}
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_directory_appears_only_when_complete(tmp_path):
    with pytest.raises(RuntimeError), atomic.directory(tmp_path / "adapter") as scratch:
        (scratch / "half.bin").write_text("x")
        raise RuntimeError("crash while saving")
    assert list(tmp_path.iterdir()) == []


def test_resolve_finds_runs_under_a_root_and_rejects_non_runs(tmp_path):
    runs = [RunDir.create(tmp_path, n) for n in ("a", "b")]
    for run in runs:
        run.set_status("completed")
    assert {r.path for r in resolve([str(tmp_path)])} == {r.path for r in runs}
    with pytest.raises(RunDirError, match="not a run directory"):
        resolve([str(tmp_path / "missing")])


def test_fetch_downloads_with_pip_and_unpacks_into_cache(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    build_wheel(index, "asymtune-test-asset", "0.0.1", {"asymtune_test_asset/data.jsonl": '{"x": 1}\n'})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("ASYMTUNE_CACHE", str(tmp_path / "cache"))
    asset = assets.Asset("test-asset", "asymtune-test-asset", "0.0.1", "asymtune_test_asset/data.jsonl", "file", "t")
    path = assets.fetch(asset, log=lambda _: None)
    assert path == tmp_path / "cache" / "packages" / "asymtune-test-asset-0.0.1" / "asymtune_test_asset/data.jsonl"
    assert path.read_text() == '{"x": 1}\n'
    missing = assets.Asset("gone", "asymtune-no-such-asset", "9.9.9", "x", "file", "t")
    with pytest.raises(assets.AssetError, match=r"could not download asymtune-no-such-asset==9\.9\.9"):
        assets.fetch(missing, log=lambda _: None)


def test_a_run_whose_process_died_natively_is_reported_dead_not_running(tmp_path):
    import platform
    import subprocess
    import sys

    from click.testing import CliRunner

    from asymtune.cli import main

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs (as after the kernel's out-of-memory kill)
    for name, lock in (("locked-then-killed", True), ("old-style", False)):
        run = RunDir.create(tmp_path / "runs", name)
        (run.path / "recipe.yaml").write_text(f"name: {name}\n")
        run.set_status("running", pid=gone.pid, host=platform.node())
        if lock:
            with run.exclusive("training"):
                assert not run.died()  # held: alive
        assert run.died()
    alive = RunDir.create(tmp_path / "runs", "alive")
    alive.set_status("running", pid=gone.pid, host="another-host")
    assert not alive.died()  # nothing to tell on another host without a lock
    result = CliRunner().invoke(main, ["runs", str(tmp_path / "runs")], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and result.output.count("dead") == 2, result.output
    assert f"its process {gone.pid} died" in result.output
