"""Several training processes (DDP under `accelerate launch`, `torchrun` or `train --nproc N`): rank 0
owns the run directory and the terminal; every rank trains on its share of each global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from asymtune.errors import UserError
from asymtune.runs import RunDir


class LaunchError(UserError):
    """The launcher's configuration (accelerate config, torchrun flags) cannot run this training."""


def world_size() -> int:
    """Processes in this training job, from the launcher's environment (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def shared_run_dir(make: Callable[[], RunDir]) -> RunDir:
    """`make()` on rank 0 only; every other rank gets the same run folder as a non-writing RunDir.

    Joins the process group first (gloo on CPU, NCCL on GPU, as accelerate chooses) so the Trainer
    built later finds it; other ranks print nothing."""
    if world_size() == 1:
        return make()
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    from asymtune.report import console

    if not torch.cuda.is_available():  # accelerate forms a CPU group (gloo) only when asked to use the CPU
        os.environ["ACCELERATE_USE_CPU"] = "true"
    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:
        console.quiet = True
    path = [str(make().path) if state.is_main_process else None]
    dist.broadcast_object_list(path, src=0)
    run = RunDir(Path(path[0]), writes=state.is_main_process)
    console.print(f"distributed: {state.num_processes} processes ({state.backend}); rank 0 writes {run.path}")
    return run


def train_argv(
    recipe_file: str | None, overrides: tuple[str, ...], output_dir: str, resume_dir: str | None,
    trust_remote_code: bool = False,
) -> list[str]:
    """The `asymtune train` arguments each launched process runs (the same command, without --nproc)."""
    return ["train", *([recipe_file] if recipe_file else []), *(f"--set={o}" for o in overrides),
            f"--output-dir={output_dir}", *([f"--resume={resume_dir}"] if resume_dir else []),
            *(["--trust-remote-code"] if trust_remote_code else [])]


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run `asymtune <argv>` as `nproc` processes through accelerate; return their exit status."""
    # accelerate's multi-GPU launcher is torchrun underneath: one process per GPU, or over gloo on CPU.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "asymtune.cli", *argv,
    ]
    return subprocess.run(command, check=False).returncode
