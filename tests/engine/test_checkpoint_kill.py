"""kill -9 at every step of a checkpoint save: the last good checkpoint always survives.

A forked child runs `checkpoint.save` (one rank, a stand-in engine that writes files like
DeepSpeed's) and SIGKILLs itself before its k-th file operation, or halfway through it
(a torn write, a half-done rmtree), for every k. After each kill the directory must hold
a complete checkpoint, `latest` must name one, and a resume must pick one. "Complete" is
judged here from the files themselves, not by the module's own `complete_checkpoints`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch

from ptft_engine.engine import checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs os.fork")

ENGINE_FILE = "global/model_states.pt"


class FakeEngine:
    """Writes what DeepSpeed's save_checkpoint would: a file under <dir>/<tag>/."""

    def __init__(self, value: float):
        self.value = value

    def save_checkpoint(self, save_dir, tag, save_latest):
        assert save_latest is False  # our `latest` is the only one
        path = Path(save_dir) / tag / ENGINE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.full((4,), self.value)}, path)


def is_complete(path: Path, step: int | None = None) -> bool:
    """Every file a resume reads is there and loads; meta names the step."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        engine = torch.load(path / ENGINE_FILE, weights_only=True)
        rank = torch.load(path / "rank00000.pt", weights_only=False)
    except (OSError, ValueError, RuntimeError, EOFError):
        return False
    ok = meta["step"] == int(path.name.split("-")[1]) and "rng" in rank and engine["w"].shape == (4,)
    return ok and (step is None or meta["step"] == step)


def save(ckpt_dir: Path, step: int, keep_last: int) -> None:
    checkpoint.save(FakeEngine(float(step)), ckpt_dir, step, rank=0, rank_state={"data": {"position": step}},
                    meta={"world_size": 1}, keep_last=keep_last)


def _tear(name: str, args) -> None:
    """Half of an operation: an empty target file, or a directory with all but meta.json gone."""
    if name in ("torch.save", "_fsync_write"):
        Path(args[1] if name == "torch.save" else args[0]).write_bytes(b"")
    elif name == "rmtree" and Path(args[0]).is_dir():
        for p in sorted(Path(args[0]).rglob("*"), reverse=True):
            if p.is_file() and p.name != "meta.json":
                p.unlink()


def run_killed(ckpt_dir: Path, step: int, keep_last: int, kill_at: int, torn: bool) -> int:
    """Fork; the child saves and SIGKILLs itself at file operation `kill_at`. Returns the
    number of operations when it was not killed (kill_at < 0)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            count = [0]

            def hook(name, fn):
                def wrapped(*args, **kwargs):
                    if count[0] == kill_at:
                        if torn:
                            _tear(name, args)
                        os.kill(os.getpid(), signal.SIGKILL)
                    count[0] += 1
                    return fn(*args, **kwargs)
                return wrapped

            checkpoint.torch.save = hook("torch.save", torch.save)
            checkpoint._fsync_write = hook("_fsync_write", checkpoint._fsync_write)
            checkpoint.os.rename = hook("rename", os.rename)
            checkpoint.os.replace = hook("replace", os.replace)
            checkpoint.shutil.rmtree = hook("rmtree", shutil.rmtree)
            save(ckpt_dir, step, keep_last)
            code = min(count[0], 200)
        except BaseException:  # noqa: BLE001 - report, never fall back into the test runner
            import traceback

            traceback.print_exc()
            code = 255
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if kill_at < 0:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) not in (0, 255), status
        return os.WEXITSTATUS(status)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"op {kill_at} not reached ({status})"
    return -1


def check_survivor(ckpt_dir: Path, allowed_steps: set[int], where: str) -> None:
    latest_file = ckpt_dir / "latest"
    if latest_file.exists():
        named = latest_file.read_text().strip()
        assert is_complete(ckpt_dir / named), f"{where}: latest names {named!r}, not a complete checkpoint"
        assert int(named.split("-")[1]) in allowed_steps, f"{where}: latest names {named!r}"
    found = checkpoint.find_latest(ckpt_dir)
    assert found is not None, f"{where}: no checkpoint found"
    assert is_complete(found), f"{where}: resume would pick {found.name}, which is incomplete"
    assert checkpoint.read_meta(found)["step"] in allowed_steps, f"{where}: picked {found.name}"
    # the start of a resumed run clears the leftovers, and the survivor is untouched by it
    checkpoint.remove_partial(ckpt_dir)
    assert not list(ckpt_dir.glob("tmp-*")) and is_complete(found), where


@pytest.mark.parametrize("keep_last", [1, 3])
def test_kill_at_every_step_of_a_save_keeps_a_complete_checkpoint(tmp_path, keep_last):
    base = tmp_path / "base"
    save(base, 10, keep_last)
    dry = tmp_path / "dry"
    shutil.copytree(base, dry)
    n_ops = run_killed(dry, 20, keep_last, -1, False)
    assert is_complete(dry / "step-00000020", 20) and (dry / "latest").read_text() == "step-00000020"
    assert n_ops >= 5  # engine files, rank file, meta, rename, latest (+ pruning)
    for kill_at in range(n_ops):
        for torn in (False, True):
            ckpts = tmp_path / f"k{kill_at}{'t' if torn else ''}"
            shutil.copytree(base, ckpts)
            run_killed(ckpts, 20, keep_last, kill_at, torn)
            check_survivor(ckpts, {10, 20}, f"killed at op {kill_at}{' (torn)' if torn else ''}")


def test_kill_while_resaving_a_step_after_a_rollback(tmp_path):
    # a rollback to step 10 re-saves step 20, which exists: the old copy is replaced
    base = tmp_path / "base"
    save(base, 5, 5)  # an older one, which `latest` must not fall back to
    save(base, 10, 5)
    save(base, 20, 5)
    dry = tmp_path / "dry"
    shutil.copytree(base, dry)
    n_ops = run_killed(dry, 20, 5, -1, False)
    assert is_complete(dry / "step-00000020", 20) and (dry / "latest").read_text() == "step-00000020"
    for kill_at in range(n_ops):
        for torn in (False, True):
            ckpts = tmp_path / f"k{kill_at}{'t' if torn else ''}"
            shutil.copytree(base, ckpts)
            run_killed(ckpts, 20, 5, kill_at, torn)
            check_survivor(ckpts, {10, 20}, f"re-save killed at op {kill_at}{' (torn)' if torn else ''}")


def test_latest_is_written_only_after_the_checkpoint_is_complete(tmp_path, monkeypatch):
    """`latest` changes exactly once per save, when the new directory is already complete."""
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        real_replace(src, dst)
        if Path(dst).name == "latest":
            named = Path(dst).read_text()
            seen.append((named, is_complete(Path(dst).parent / named)))
    monkeypatch.setattr(checkpoint.os, "replace", spy)
    for step in (1, 2, 3):
        save(tmp_path, step, keep_last=2)
    assert seen == [("step-00000001", True), ("step-00000002", True), ("step-00000003", True)]
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]


def test_rng_state_round_trips_every_generator():
    import random

    import numpy as np

    state = checkpoint.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(3)  # move every stream on
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


class LoadingEngine(FakeEngine):
    def __init__(self, ok: bool = True):
        super().__init__(0.0)
        self.ok, self.loaded_from = ok, None

    def load_checkpoint(self, load_dir, tag, load_optimizer_states, load_lr_scheduler_states):
        self.loaded_from = (Path(load_dir), tag, load_optimizer_states)
        return (str(Path(load_dir) / tag) if self.ok else None), {}


def test_load_restores_rank_state_and_a_new_rank_reads_rank_0s(tmp_path):
    import random

    random.seed(123)
    expect = random.random()
    random.seed(123)
    path = checkpoint.save(FakeEngine(1.0), tmp_path, 7, rank=0, rank_state={"data": {"position": 42}},
                           meta={"world_size": 1}, keep_last=2)
    random.random()
    engine = LoadingEngine()
    meta, state = checkpoint.load(engine, path, rank=0)
    assert meta["step"] == 7 and state["data"] == {"position": 42}
    assert engine.loaded_from == (tmp_path, "step-00000007", True)
    assert random.random() == expect  # the RNG is back where the save left it
    # a rank the saving run did not have (elastic resume 1 -> 2): rank 0's trainer/data state,
    # its own RNG kept; `states` replaces DeepSpeed's load
    random.seed(5)
    expect = random.random()
    random.seed(5)
    seen = []
    meta, state = checkpoint.load(LoadingEngine(ok=False), path, rank=1, states=seen.append)
    assert seen == [path] and state["data"] == {"position": 42} and random.random() == expect
    with pytest.raises(ValueError, match="could not load"):
        checkpoint.load(LoadingEngine(ok=False), path, rank=0)
    with pytest.raises(ValueError, match="no meta.json"):
        checkpoint.read_meta(tmp_path / "step-00000099")
    assert checkpoint.find_latest(tmp_path / "missing") is None
    assert checkpoint.complete_checkpoints(tmp_path / "x") == []
    assert checkpoint.find_latest(str(tmp_path)) == path  # a str path works too (the CLI passes one)


def test_a_save_starts_from_an_empty_temp_dir_and_can_resave_without_latest(tmp_path):
    # leftovers of an earlier killed save of the same step (say, a rank file from a bigger
    # world) never end up in the new checkpoint
    (tmp_path / "tmp-step-00000004").mkdir(parents=True)
    (tmp_path / "tmp-step-00000004" / "rank00007.pt").write_bytes(b"stale")
    path = checkpoint.save(FakeEngine(4.0), tmp_path, 4, rank=0, rank_state={}, meta={}, keep_last=2)
    assert not (path / "rank00007.pt").exists() and is_complete(path, 4)
    (tmp_path / "latest").unlink()  # a directory from before `latest` existed
    again = checkpoint.save(FakeEngine(4.0), tmp_path, 4, rank=0, rank_state={}, meta={}, keep_last=2)
    assert again == path and is_complete(path, 4) and (tmp_path / "latest").read_text() == "step-00000004"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000004"]
    # the moved-aside copy of a re-save killed before its cleanup does not block the next one
    (tmp_path / "tmp-replaced-step-00000004" / "global").mkdir(parents=True)
    assert checkpoint.save(FakeEngine(4.0), tmp_path, 4, rank=0, rank_state={}, meta={}, keep_last=2) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000004"]
    # str paths work as well as Path ones (the trainer and the CLI pass either)
    checkpoint.save(FakeEngine(5.0), str(tmp_path), 5, rank=0, rank_state={}, meta={}, keep_last=2)
    (tmp_path / "tmp-step-00000009").mkdir()
    checkpoint.remove_partial(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000004", "step-00000005"]


def test_a_rank_whose_engine_writes_nothing_still_saves(tmp_path):
    class SilentEngine:  # e.g. a rank that holds no partition of its own
        def save_checkpoint(self, save_dir, tag, save_latest):
            pass

    path = checkpoint.save(SilentEngine(), tmp_path / "new", 3, rank=0, rank_state={"data": 1}, meta={}, keep_last=1)
    assert torch.load(path / "rank00000.pt", weights_only=False)["data"] == 1
    assert checkpoint.read_meta(path)["step"] == 3
