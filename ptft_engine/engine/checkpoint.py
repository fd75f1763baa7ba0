"""Atomic DeepSpeed checkpoints with per-rank RNG and data-stream state.

Layout of a checkpoint directory:

    checkpoints/
      step-00000040/        one complete checkpoint (DeepSpeed files + ours)
        meta.json           written last, before the rename: marks it complete
        rank00000.pt ...    per rank: RNG states (python, numpy, torch) + data stream state
        global_step40/... or DeepSpeed's own files (model, optimizer partitions)
      latest                "step-00000040", replaced via temp file + os.replace
      tmp-step-00000050/    a save in progress (or killed): never loaded, removed later

Every rank writes into `tmp-<tag>`; after a barrier rank 0 writes meta.json and renames
the directory, so a kill at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

STEP_RE = re.compile(r"^step-(\d{8})$")


def step_tag(step: int) -> str:
    return f"step-{step:08d}"


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _write_order(path: Path) -> tuple:
    """Sort key: the save sequence number of this run lineage (then time, then step)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    return (meta.get("seq", -1), meta.get("saved_at", 0.0), int(STEP_RE.match(path.name).group(1)))


def complete_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints (meta.json present), oldest first in write order: after a resume
    from an older checkpoint, the newer saves of the abandoned branch sort before this run's."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if STEP_RE.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=_write_order)


def find_latest(ckpt_dir: str | Path) -> Path | None:
    done = complete_checkpoints(ckpt_dir)
    return done[-1] if done else None


def read_meta(path: str | Path) -> dict[str, Any]:
    meta_file = Path(path) / "meta.json"
    if not meta_file.is_file():
        raise ValueError(f"{path}: not a complete checkpoint (no meta.json)")
    return json.loads(meta_file.read_text())


def prepare(ckpt_dir: Path, tmp: Path, rank: int) -> None:
    """Collective: rank 0 clears a leftover `tmp-<tag>` before any rank writes into it."""
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()


def save(engine, ckpt_dir: str | Path, step: int, *, rank: int, rank_state: dict[str, Any],
         meta: dict[str, Any], keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint path."""
    ckpt_dir = Path(ckpt_dir)
    tmp_tag = f"tmp-{step_tag(step)}"
    prepare(ckpt_dir, ckpt_dir / tmp_tag, rank)
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, save_latest=False)
    (ckpt_dir / tmp_tag).mkdir(parents=True, exist_ok=True)
    torch.save({"rng": rng_state(), **rank_state}, ckpt_dir / tmp_tag / f"rank{rank:05d}.pt")
    barrier()  # every rank's files are on disk before the checkpoint is declared complete
    if rank == 0:
        finalize(ckpt_dir, step, meta, keep_last)
    barrier()
    return ckpt_dir / step_tag(step)


def finalize(ckpt_dir: Path, step: int, meta: dict[str, Any], keep_last: int) -> Path:
    """Rank 0, once every rank's files are in `tmp-<tag>`: meta.json, rename, `latest`, pruning."""
    tag = step_tag(step)
    tmp_tag = f"tmp-{tag}"
    final = ckpt_dir / tag
    done = complete_checkpoints(ckpt_dir)
    seq = _write_order(done[-1])[0] + 1 if done else 0  # write order of this lineage, for pruning
    _fsync_write(ckpt_dir / tmp_tag / "meta.json",
                 json.dumps({"step": step, "seq": seq, "saved_at": time.time(), **meta}, indent=1, default=str))
    replaced = ckpt_dir / f"tmp-replaced-{tag}"  # "tmp-*": remove_partial clears it after a kill
    if final.exists():  # re-saving a step (after a rollback): move the old copy aside in one rename,
        # after pointing `latest` back at the newest other complete checkpoint, so that neither
        # `latest` nor find_latest can meet a missing or half-deleted directory
        others = [p for p in done if p.name != tag]
        _write_latest(ckpt_dir, others[-1].name if others else None)
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
    os.rename(ckpt_dir / tmp_tag, final)
    _write_latest(ckpt_dir, tag)
    shutil.rmtree(replaced, ignore_errors=True)
    prune(ckpt_dir, keep_last)
    return final


def fsync_write(path: Path, text: str) -> None:
    _fsync_write(path, text)


def _write_latest(ckpt_dir: Path, tag: str | None) -> None:
    """Point `latest` at `tag` atomically (temp file + os.replace); None removes it."""
    if tag is None:
        (ckpt_dir / "latest").unlink(missing_ok=True)
        return
    _fsync_write(ckpt_dir / "latest.tmp", tag)
    os.replace(ckpt_dir / "latest.tmp", ckpt_dir / "latest")


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` by write order (never the highest step numbers of whatever
    is in the directory)."""
    for old in complete_checkpoints(ckpt_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def remove_partial(ckpt_dir: str | Path) -> None:
    """Leftovers of saves that were killed midway (rank 0, before training starts)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob("tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in ckpt_dir.glob("tmp-replaced-step-*"):  # a kill between the two renames of a re-save
            final = ckpt_dir / p.name.removeprefix("tmp-replaced-")
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.rename(p, final)


def load(engine, path: str | Path, *, rank: int,
         states: Callable[[Path], None] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Collective: restores model + optimizer into `engine` (DeepSpeed's load, or `states(path)`
    for a checkpoint of another layout); returns (meta, this rank's state). A rank the saving
    run did not have reads rank 0's file (the trainer and data state are global) and keeps
    its own RNG."""
    path = Path(path)
    meta = read_meta(path)
    if states is not None:
        states(path)
    else:
        loaded, _ = engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                           load_lr_scheduler_states=False)
        if loaded is None:
            raise ValueError(f"{path}: DeepSpeed could not load this checkpoint")
    own = rank < meta.get("world_size", rank + 1)
    state = torch.load(path / f"rank{rank if own else 0:05d}.pt", weights_only=False)
    if own:
        set_rng_state(state["rng"])
    return meta, state
