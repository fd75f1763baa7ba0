"""Asynchronous checkpoint saves: snapshot to host memory, write in the background.

The step waits only for the snapshot. DeepSpeed's `save_checkpoint` runs as usual (its
collectives, its directory layout), but its checkpoint engine is swapped for
`SnapshotEngine`, whose `save` copies each state dict to host memory and queues the file
instead of writing it. A background thread per rank then writes the queued files and a
`written-rankNNNNN` marker into `tmp-<tag>/`; rank 0's thread waits for every rank's
marker and finishes the save exactly as a synchronous one does (meta.json, rename,
`latest`, pruning: `checkpoint.finalize`). A crash or kill before that leaves `tmp-<tag>/`
without meta.json: the previous checkpoint stays `latest`, and the next start removes it.

One save is in flight per rank at a time: the next save, a rollback, the end of the run
and a stop on a signal wait for it first (`AsyncSaver.wait`).
"""
from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from ptft_engine.engine import checkpoint

log = logging.getLogger(__name__)
MARKER = "written-rank{:05d}"


def snapshot(obj: Any, memo: dict | None = None) -> Any:
    """A host-memory copy of a (nested) state dict. Storages are copied once each, and every
    tensor is rebuilt as the same view of its copy, so tied weights stay tied and the file
    torch.save writes from the copy is the one it would have written from the original."""
    memo = {} if memo is None else memo
    if torch.is_tensor(obj):
        st = obj.untyped_storage()
        key = (st.data_ptr(), st.nbytes(), str(obj.device))
        if key not in memo:
            memo[key] = st.clone() if obj.device.type == "cpu" else st.cpu()
        out = torch.empty(0, dtype=obj.dtype).set_(memo[key], obj.storage_offset(), obj.size(), obj.stride())
        return torch.nn.Parameter(out, requires_grad=obj.requires_grad) if isinstance(obj, torch.nn.Parameter) else out
    if isinstance(obj, dict):
        out = copy.copy(obj)  # keeps OrderedDict / defaultdict
        for k, v in obj.items():
            out[k] = snapshot(v, memo)
        return out
    if isinstance(obj, list):
        return [snapshot(v, memo) for v in obj]
    if isinstance(obj, tuple):
        items = [snapshot(v, memo) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)  # namedtuple, torch.Size
    return obj  # numbers, strings, DeepSpeed's small config objects: never changed in place


class SnapshotEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine whose `save` queues a host copy while `queue` is a
    list (an async save is being taken), and writes at once otherwise."""

    def __init__(self, original):
        self.name = "ptft-snapshot"
        self.zipfile_serialization = getattr(original, "zipfile_serialization", True)
        self.queue: list[tuple[Any, str]] | None = None

    def save(self, state_dict, path: str):
        if self.queue is None:
            return super().save(state_dict, path)
        self.queue.append((snapshot(state_dict), path))


def install(engine) -> SnapshotEngine:
    if not isinstance(engine.checkpoint_engine, SnapshotEngine):
        engine.checkpoint_engine = SnapshotEngine(engine.checkpoint_engine)
    return engine.checkpoint_engine


def write_file(obj: Any, path: str | Path, zipfile_serialization: bool = True) -> None:
    """One queued file (a seam the tests slow down to land a kill mid-write)."""
    torch.save(obj, path, _use_new_zipfile_serialization=zipfile_serialization)


class AsyncSaver:
    """This rank's background writer: one save in flight; its error surfaces on `wait`."""

    def __init__(self, engine, *, rank: int, world_size: int, timeout_s: float):
        self.snapshots = install(engine)
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def wait(self, timeout: float | None = None) -> bool:
        """Join the save in flight; False if it is still running after `timeout` seconds."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"rank {self.rank}: background checkpoint write failed: {error}") from error
        return True

    def save(self, engine, ckpt_dir: str | Path, step: int, *, rank_state: dict[str, Any], meta: dict[str, Any],
             keep_last: int, after: Callable[[Path], None] | None = None) -> Path:
        """Collective: every rank calls it; returns once the state is in host memory. `after`
        (rank 0) runs in the background once the checkpoint is complete."""
        self.wait()  # the previous save is complete (on rank 0: also declared complete)
        ckpt_dir = Path(ckpt_dir)
        tag = checkpoint.step_tag(step)
        tmp = ckpt_dir / f"tmp-{tag}"
        checkpoint.prepare(ckpt_dir, tmp, self.rank)
        self.snapshots.queue = []
        try:
            engine.save_checkpoint(str(ckpt_dir), tag=tmp.name, save_latest=False)
            files = self.snapshots.queue
        finally:
            self.snapshots.queue = None
        tmp.mkdir(parents=True, exist_ok=True)
        own = {"rng": checkpoint.rng_state(), **copy.deepcopy(rank_state)}
        files.append((snapshot(own), str(tmp / f"rank{self.rank:05d}.pt")))
        self._thread = threading.Thread(target=self._write, name=f"ptft-save-{tag}", daemon=True,
                                        args=(files, ckpt_dir, tmp, step, meta, keep_last, after))
        self._thread.start()
        return ckpt_dir / tag

    def _write(self, files, ckpt_dir: Path, tmp: Path, step: int, meta, keep_last: int, after) -> None:
        try:
            for obj, path in files:
                write_file(obj, path, self.snapshots.zipfile_serialization)
            files.clear()  # the host copy is no longer needed
            checkpoint.fsync_write(tmp / MARKER.format(self.rank), "")
            if self.rank != 0:
                return
            self._await_markers(tmp)
            for r in range(self.world_size):
                (tmp / MARKER.format(r)).unlink()
            final = checkpoint.finalize(ckpt_dir, step, meta, keep_last)
            if after is not None:
                after(final)
        except BaseException as exc:  # re-raised on the training thread by wait()
            self._error = exc

    def _await_markers(self, tmp: Path) -> None:
        deadline = time.monotonic() + self.timeout_s
        missing = list(range(self.world_size))
        while missing:
            missing = [r for r in missing if not os.path.exists(tmp / MARKER.format(r))]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tmp}: rank {missing[0]} did not finish writing its files within "
                                   f"{self.timeout_s:g} s (run.dist_timeout_s); the save is abandoned")
            time.sleep(0.02)
