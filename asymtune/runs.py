"""Run directories: runs/<name>/<YYYYmmdd-HHMMSS>-<id>/ holding everything a run produced.

Layout: recipe.yaml (resolved), env.json, status.json, metrics.json, logs/train.jsonl,
adapter/ (PEFT format). Every file is written atomically; an existing run dir is never reused.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from asymtune import atomic
from asymtune.errors import UserError
from asymtune.recipe import NAME_PATTERN as NAME
from asymtune.recipe import Recipe, load, to_yaml

if TYPE_CHECKING:
    from asymtune.checkpoints import Checkpoint

LIBRARIES = ("asymtune", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "pydantic")
LABELS_FILE = "labels.json"
LOCK_FILE = ".lock"  # locked by the one process writing the run; the OS releases it when that process dies
HOLDER_FILE = ".lock.json"  # who took the lock (pid, host, purpose), written just after taking it
STATUSES = ("running", "completed", "failed", "interrupted")


class RunDirError(UserError):
    """A path given as a run directory is not one."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _rank_zero_only(method: Callable) -> Callable:
    """Skip `method` on the RunDir of a non-zero rank: in a multi-process run rank 0 writes the folder."""

    @functools.wraps(method)
    def write_if_rank_zero(self: RunDir, *args: Any, **kwargs: Any) -> None:
        if self.writes:
            method(self, *args, **kwargs)

    return write_if_rank_zero


class RunDir:
    """One run's folder; create with `RunDir.create`, read back with `RunDir.open`."""

    def __init__(self, path: Path, writes: bool = True) -> None:
        self.path = path
        self.writes = writes  # False on the non-zero ranks of a multi-process run: rank 0 writes
        self.resume_from: Checkpoint | None = None  # set by `train --resume`

    @classmethod
    def create(cls, root: Path, name: str) -> RunDir:
        """A new, empty run folder under root/name (never an existing one)."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = root / name / f"{stamp}-{secrets.token_hex(3)}"
        path.mkdir(parents=True, exist_ok=False)
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> RunDir:
        if not (path / "status.json").is_file():
            raise RunDirError(f"{path}: not a run directory (no status.json)")
        return cls(path)

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def model_dir(self) -> Path:
        """Whole-model weights, for methods that train the base model itself (full, linear_probe)."""
        return self.path / "model"

    @property
    def recipe_file(self) -> Path:
        """The resolved recipe the run was trained with."""
        return self.path / "recipe.yaml"

    @property
    def log_file(self) -> Path:
        return self.path / "logs" / "train.jsonl"

    @_rank_zero_only
    def write_recipe(self, recipe: Recipe) -> None:
        atomic.write_text(self.recipe_file, to_yaml(recipe))

    @_rank_zero_only
    def write_env(self, recipe: Recipe, argv: list[str]) -> None:
        atomic.write_json(self.path / "env.json", environment(recipe.seed, argv))

    @_rank_zero_only
    def set_status(self, status: str, **details: Any) -> None:
        assert status in STATUSES, status
        previous = self.read_json("status.json") or {}
        record = {"status": status, "started": previous.get("started", _now()), "updated": _now(), **details}
        atomic.write_json(self.path / "status.json", record)

    @_rank_zero_only
    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic.write_json(self.path / "metrics.json", metrics)

    @_rank_zero_only
    def write_labels(self, maps: dict[str, dict]) -> None:
        """A classifier's classes in output order, as transformers' id2label / label2id (`models.label_maps`)."""
        atomic.write_json(self.path / LABELS_FILE, maps)

    @_rank_zero_only
    def append_log(self, record: dict[str, Any]) -> None:
        """One JSON line per logging step (append-only; a torn last line is the only possible loss)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_json(self, name: str) -> dict[str, Any] | None:
        """The JSON object in RUN/name, None if there is no such file; RunDirError naming it if damaged."""
        file = self.path / name
        if not file.is_file():
            return None
        try:
            document = json.loads(file.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise RunDirError(f"{file}: damaged, not a JSON document ({type(error).__name__})") from None
        if not isinstance(document, dict):
            raise RunDirError(f"{file}: damaged, a JSON {type(document).__name__} where an object belongs")
        return document

    @property
    def status(self) -> str:
        return (self.read_json("status.json") or {}).get("status", "unknown")

    def trained_recipe(self, trust_remote_code: bool = False) -> Recipe:
        """The recipe the run trained with, to load its model again (`untrusted_recipe`)."""
        return untrusted_recipe(self.recipe_file, trust_remote_code)

    def labels(self) -> list[str] | None:
        """A classifier's class names in output order (labels.json), None for runs without classes."""
        return read_labels(self.path / LABELS_FILE)

    @contextmanager
    def exclusive(self, purpose: str) -> Iterator[None]:
        """Hold the run's lock (`filelock`: flock on POSIX, msvcrt on Windows) while `purpose` (e.g. "training")
        writes into it. RunDirError naming the holder when another process has it, or naming a symlink in the run
        that leads out of it (writes, appends and copies would follow it). Ranks that do not write take no lock."""
        self.check_links()
        if not self.writes:
            yield
            return
        lock = self._lock()
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunDirError(f"{self.path}: in use by {_holder(self.path / HOLDER_FILE)}; wait for it to end or "
                              "stop it") from None
        try:
            atomic.write_json(self.path / HOLDER_FILE, {"pid": os.getpid(), "host": platform.node(),
                                                        "purpose": purpose})
            yield
        finally:
            lock.release()

    def is_locked(self) -> bool:
        """Whether a live process holds the run's lock (is training it, or writing into it)."""
        if not (self.path / LOCK_FILE).is_file():
            return False
        lock = self._lock()
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return True
        lock.release()
        return False

    def _lock(self) -> filelock.FileLock:
        """The run's lock file, refused when it is a symlink (the lock would be taken, and truncated, elsewhere)."""
        path = self.path / LOCK_FILE
        if path.is_symlink():
            raise RunDirError(f"{path}: a symlink; asymtune takes a run's lock only on a file inside the run")
        return filelock.FileLock(path, thread_local=False)

    def check_links(self) -> None:
        """RunDirError naming the first symlink under the run that resolves outside it."""
        root = self.path.resolve()
        for folder, names, files in os.walk(self.path):
            for name in names + files:
                entry = Path(folder) / name
                if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                    raise RunDirError(f"{entry}: a symlink out of the run directory (to {os.readlink(entry)}); "
                                      "asymtune writes and copies only inside a run, so it refuses this run")

    def died(self) -> bool:
        """Whether the run says it is running but no process is: its lock is free (the kernel released it
        when the trainer died, e.g. killed for memory), or its pid on this host is gone."""
        status = self.read_json("status.json") or {}
        if status.get("status") != "running" or self.is_locked():
            return False
        if (self.path / LOCK_FILE).is_file():
            return True
        pid = trainer_here(status)
        return pid is not None and not pid_alive(pid)


def read_labels(file: Path) -> list[str] | None:
    """Class names in output order from a labels.json (`models.label_maps`), None if there is no such file;
    RunDirError naming it when it is damaged."""
    if not file.is_file():
        return None
    try:
        id2label = json.loads(file.read_bytes().decode("utf-8"))["id2label"]
        return [str(id2label[str(i)]) for i in range(len(id2label))]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError):
        raise RunDirError(f"{file}: damaged, no id2label for classes 0, 1, ...") from None


def untrusted_recipe(file: Path, trust_remote_code: bool = False) -> Recipe:
    """A recipe stored beside trained weights (a run's, an export's), read as data: its `model.trust_remote_code`
    is not honoured (a folder cannot opt anyone into running code): `trust_remote_code`, the caller's
    --trust-remote-code, decides, and a recipe whose model needs it is refused without it."""
    stored = load(file)
    model = stored.model
    if model.trust_remote_code and not trust_remote_code:
        raise RunDirError(
            f"{file}: model {model.name or model.gguf_file} runs code of its own (model.trust_remote_code: true), "
            "and a stored recipe cannot opt you in; pass --trust-remote-code if you trust that model folder's code"
        )
    return stored.model_copy(update={"model": model.model_copy(update={"trust_remote_code": trust_remote_code})})


def environment(seed: int, argv: list[str]) -> dict[str, Any]:
    """Versions, seed, argv, git commit of the asymtune checkout (if any), device and host."""
    from asymtune import devices  # imports torch: only runs that train need it; keep `compare` and friends light

    versions = {}
    for library in LIBRARIES:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            versions[library] = None
    return {
        "created": _now(),
        "seed": seed,
        "argv": argv,
        "python": sys.version.split()[0],
        "versions": versions,
        "git_commit": _git_commit(),
        "device": devices.name(),
        "host": platform.node(),
        "pid": os.getpid(),
        "started_unix": time.time(),
    }


def resolve(refs: list[str], root: Path = Path("runs")) -> list[RunDir]:
    """The runs named by `refs`, the same way in every command: a run folder; a folder holding runs (all of
    them); a glob over either; or a recipe name, meaning its newest run under `root` (the runs root)."""
    found: list[RunDir] = []
    for ref in refs:
        if glob.has_magic(ref):
            matches = sorted(glob.glob(ref))
            if not matches:
                raise RunDirError(f"{ref}: the pattern matches nothing")
            for match in matches:
                found.extend(_runs_in(Path(match)))
        elif Path(ref).is_dir():
            found.extend(_runs_in(Path(ref)))
        elif NAME.match(ref) and (root / ref).is_dir():
            newest = _runs_in(root / ref)[-1]  # run folders are named by start time
            found.append(newest)
        else:
            raise RunDirError(f"{ref}: not a run directory, a folder of runs, or the name of a run under {root}")
    return found


def resolve_one(ref: str, root: Path, what: str) -> RunDir:
    """The single run `ref` names (see `resolve`); RunDirError, prefixed by `what` (e.g. '--baseline'), if it
    names none or several."""
    named = resolve([ref], root)
    if len(named) != 1:
        raise RunDirError(f"{what} {ref}: names {len(named)} runs; give one run")
    return named[0]


def _runs_in(path: Path) -> list[RunDir]:
    """`path` itself if it is a run directory, else every run directory below it (by path: a recipe name's
    runs oldest first)."""
    if (path / "status.json").is_file():
        return [RunDir(path)]
    nested = sorted(p.parent for p in path.glob("**/status.json"))
    if not nested:
        raise RunDirError(f"{path}: not a run directory and holds none")
    return [RunDir(p) for p in nested]


def trainer_here(status: dict[str, Any]) -> int | None:
    """The pid a `running` status.json names, when that process ran on this host (else None)."""
    pid = status.get("pid")
    running_here = status.get("status") == "running" and status.get("host") == platform.node()
    return pid if running_here and isinstance(pid, int) else None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (and is not this process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _holder(file: Path) -> str:
    """Who holds a run's lock, as it wrote itself into `file` just after taking it."""
    for _ in range(50):
        try:
            holder = json.loads(file.read_bytes().decode("utf-8"))
            return f"process {int(holder['pid'])} on {holder['host']} ({holder['purpose']})"
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            time.sleep(0.02)
    return "another process"


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None
