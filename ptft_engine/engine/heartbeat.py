"""Which rank stopped answering? Each rank bumps a counter in the rendezvous store every
BEAT_S seconds from a background thread and posts the step it finished; when a
collective times out, a rank whose counter stands still (stopped, frozen, gone) or whose
step lags is named in the error.

The store is rank 0's TCPStore: one tiny write per beat and per step; reads only after a
timeout.
"""
from __future__ import annotations

import datetime
import threading
import time

import torch.distributed as dist

BEAT_S = 1.0
ALIVE, STEP = "ptft/alive/{}", "ptft/step/{}"


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, ValueError, AttributeError):
        return None


class Heartbeat:
    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self._stop = threading.Event()
        self._store = _store() if world_size > 1 else None
        self._thread = None
        if self._store is not None:
            self._thread = threading.Thread(target=self._beat, name="ptft-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._store.add(ALIVE.format(self.rank), 1)
            except Exception:  # noqa: BLE001 - the group is gone (teardown) or rank 0 died
                return
            self._stop.wait(BEAT_S)

    def step_done(self, step: int) -> None:
        if self._store is not None:
            try:
                self._store.set(STEP.format(self.rank), str(step))
            except Exception:  # noqa: BLE001 - a diagnostic never breaks the step
                pass

    def close(self) -> None:
        """Stop beating, wait for the thread and let go of the store, before the process group is torn down.
        A store still referenced here outlives the group and is destroyed only at interpreter exit, which
        aborts the process ("terminate called without an active exception", exit 134 / -6) after a
        finished run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 * BEAT_S)
            self._thread = None
        self._store = None

    def _read(self, fmt: str) -> dict[int, int]:
        keys = [fmt.format(r) for r in range(self.world_size)]
        return {r: int(self._store.get(k)) if self._store.check([k]) else -1 for r, k in enumerate(keys)}

    def silent_ranks(self, wait_s: float = 3 * BEAT_S + 1) -> str | None:
        """After a timeout: 'rank 1 (no sign of life for 4 s)', or the ranks whose step lags."""
        if self._store is None:
            return None
        try:
            self._store.set_timeout(datetime.timedelta(seconds=5))
            before = self._read(ALIVE)
            time.sleep(wait_s)
            after, steps = self._read(ALIVE), self._read(STEP)
        except Exception:  # noqa: BLE001 - rank 0 holds the store: it is the one gone
            return "rank 0 (its rendezvous store does not answer)"
        frozen = [r for r in range(self.world_size) if r != self.rank and after[r] == before[r]]
        if frozen:
            return ", ".join(f"rank {r}" for r in frozen) + f" (no sign of life for {wait_s:g} s)"
        newest = max(steps.values())
        behind = [r for r, s in steps.items() if s < newest]
        if behind:
            return ", ".join(f"rank {r}" for r in behind) + f" (behind at step {min(steps[r] for r in behind)}, " \
                f"the others finished step {newest})"
        return None
