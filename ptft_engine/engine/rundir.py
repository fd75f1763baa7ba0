"""A run directory belongs to one run (one lineage of checkpoints).

- Starting a name that already holds a run needs `--resume` (continue it) or `--overwrite`
  (the old run is renamed to `<name>.old-<time>`, never deleted); otherwise the start is
  refused with one line and nothing on disk changes.
- A lock (`<run_dir>/.lock`, fcntl, with the holder's host and pid in it) keeps a second
  live job out; the kernel drops it when the holder dies, also on kill -9.
- After a resume, metrics.jsonl keeps the records up to the resumed step only, so every
  step appears once (the dropped records go to metrics.superseded.jsonl, not away).

Rank 0 does all of this; the trainer writes config.yaml only after every start check passed.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"
METRICS = "metrics.jsonl"
SUPERSEDED = "metrics.superseded.jsonl"


class RunDirError(ValueError):
    """The run directory cannot be used for this start (exists, or in use by another job)."""


def _holds_a_run(path: Path) -> bool:
    return path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir())


def check_start(run_dir: Path, ckpt_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a fresh start into an existing run (reads only)."""
    if resume and overwrite:
        raise RunDirError("--overwrite starts anew and --resume continues the run: choose one")
    if resume or overwrite:
        return
    for path in dict.fromkeys([run_dir, ckpt_dir]):
        if _holds_a_run(path):
            raise RunDirError(f"{path} already holds a run; continue it with --resume auto, start anew with "
                              f"--overwrite (the old run is moved to {path.name}.old-<time>), or pick another run.name")


_HELD: list = []  # lock files this process holds


def _drop_inherited_locks() -> None:
    # A forked child (a DataLoader worker) shares the open file description, and with it the flock:
    # a worker outliving a killed rank for a few seconds would keep the run locked against the resume.
    # Closing the child's copy leaves the parent's lock as it is.
    while _HELD:
        _HELD.pop().close()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunLock:
    """An exclusive fcntl lock on `<run_dir>/.lock`, held for the life of the run (by this process only:
    forked children drop their copy)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self._fh = None

    def acquire(self, record: bool = True) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # no truncation: a refused job leaves the holder's line alone
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunDirError(f"{self.path.parent} is in use by a live job ({holder}); stop it first, "
                              "or pick another run.name") from None
        self._fh = fh
        _HELD.append(fh)
        if not record:  # only to move an old run aside: its last holder's line stays
            return self
        fh.seek(0)
        fh.truncate()
        fh.write(f"host={socket.gethostname()} pid={os.getpid()} since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        fh.flush()
        return self

    def release(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            if fh in _HELD:
                _HELD.remove(fh)
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


def move_aside(path: Path) -> Path | None:
    """Rename an old run out of the way (never delete it); returns its new name."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.old-{stamp}-{n}")
    os.rename(path, target)
    return target


def claim(run_dir: Path, ckpt_dir: Path, *, overwrite: bool) -> tuple[RunLock, list[Path]]:
    """Lock the run directory (after moving an old run aside with `overwrite`)."""
    moved: list[Path] = []
    if overwrite:
        old = RunLock(run_dir).acquire(record=False) if run_dir.is_dir() else None  # never move a live job's run
        try:
            for path in dict.fromkeys([run_dir, ckpt_dir]):
                if _holds_a_run(path) and (target := move_aside(path)) is not None:
                    moved.append(target)
        finally:
            if old is not None:
                old.release()
    return RunLock(run_dir).acquire(), moved


def discard_if_unused(run_dir: Path) -> None:
    """Remove a run directory that a failed start made and left with nothing but its lock file
    (a start refused on a bad objective or k-means file must not leave a half-made run behind)."""
    try:
        if any(p.name != LOCK_NAME for p in run_dir.iterdir()):
            return
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
        run_dir.rmdir()
    except OSError:  # gone already, or something appeared meanwhile: leave it
        pass


def trim_metrics(run_dir: Path, step: int) -> int:
    """Keep the records of steps <= `step` (the resumed one); the rest (and earlier runs'
    end-of-run summaries) move to metrics.superseded.jsonl. Returns how many moved."""
    path = run_dir / METRICS
    if not path.is_file():
        return 0
    keep, drop = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            ok = rec.get("step", 0) <= step and rec.get("split") != "summary"
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            ok = False
        (keep if ok else drop).append(line)
    if not drop:
        return 0
    with open(run_dir / SUPERSEDED, "a") as f:
        f.write("".join(line + "\n" for line in drop))
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
    return len(drop)
