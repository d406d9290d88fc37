"""What differs by platform: the device `auto` picks (CUDA, then MPS, then CPU) and its dtype, the run lock and the
folder swap without Linux-only calls, and `python -m asymtune`."""

import subprocess
import sys

import pytest
import torch

from asymtune import atomic, devices, models
from asymtune.inference import loading
from asymtune.runs import RunDir, RunDirError


@pytest.mark.parametrize(("cuda", "mps", "bf16", "device", "dtype"), [
    (True, True, True, "cuda", torch.bfloat16),
    (True, False, False, "cuda", torch.float32),  # a GPU without bfloat16: float32, not unscaled float16
    (False, True, False, "mps", torch.float32),
    (False, False, False, "cpu", torch.float32),
])
def test_auto_picks_cuda_then_mps_then_cpu_with_a_dtype_valid_there(monkeypatch, cuda, mps, bf16, device, dtype):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert devices.pick(None) == devices.pick("auto") == loading.device_or_default(None) == device
    assert devices.auto_dtype() == models.select_dtype("auto") == dtype
    assert devices.pick("cpu") == "cpu" and devices.auto_dtype("cpu") == torch.float32  # asked for: kept


def test_the_folder_swap_without_renameat2_still_replaces_the_folder(tmp_path, monkeypatch):
    """macOS and Windows have no renameat2: the three-rename path leaves the new folder and no scratch behind."""
    monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic.directory(target) as scratch:
        (scratch / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_the_run_lock_refuses_a_second_holder_and_a_symlinked_lock_file(tmp_path):
    run = RunDir.create(tmp_path / "runs", "locked")
    with run.exclusive("training"):
        assert run.is_locked()
        with pytest.raises(RunDirError, match=r"in use by process \d+ on .* \(training\)"), run.exclusive("export"):
            pass
    assert not run.is_locked()
    (run.path / ".lock").unlink(missing_ok=True)
    (run.path / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunDirError, match="a symlink"), run.exclusive("training"):
        pass
    assert not (tmp_path / "elsewhere").exists()


def test_python_dash_m_asymtune_is_the_command_line():
    result = subprocess.run([sys.executable, "-m", "asymtune", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Usage: asymtune" in result.stdout, result.stderr
