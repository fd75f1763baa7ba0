"""Opening shards for the stream: the node-local cache of remote shards, sha256 checks of
local ones, and the prefetcher that opens the next shards before the stream needs them.

Remote shards land in CACHE/shards/KEY.tar (KEY: the shard's sha256 from the index), with
their offset sidecar as KEY.idx. Every process of a node (ranks, DataLoader workers) may
ask for the same shard at once; they share it safely:
  - one downloads: it holds an exclusive flock on KEY.lock, writes KEY.tar.part, checks
    size and sha256 against the index, then renames it (a reader never sees half a shard);
    the others wait on the lock and then find the file;
  - a process using a shard holds a shared flock on it; eviction (least recently used
    first, by mtime, which each open refreshes) only removes files it can lock exclusively,
    so a shard in use or prefetched for use is never evicted.
Local shards are read in place; their sha256 is checked on first open, and a marker in
CACHE/verified (keyed by path, size, mtime and inode) spares the other processes and later
runs of the node the re-hash. A shard that fails (download or sha256) is reported as
`ShardFailed` (`unreachable` when its source did not answer); the stream then skips its
samples, flagging the batch for the trainer (stream.py), or raises in strict mode.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np

from ptft_engine.data import remote
from ptft_engine.data.errors import DataError, log
from ptft_engine.data.shard_info import ShardInfo, sha256_file

COUNTERS = ("downloads", "download_bytes", "cache_hits", "retries", "evictions", "download_wait_ms")


def default_cache_dir() -> str:
    return os.environ.get("PTFT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ptft", "shards")


# This process's start (DataLoader workers inherit the rank's): an "unreachable" verdict left
# by an earlier run is not this run's, the source may be back (a resume after an outage).
STARTED = time.time()
_UNREACHABLE = "unreachable\n"  # first line of a .failed marker for a source that did not answer


class ShardFailed(Exception):
    """A whole shard is unusable (download failed after retries, or sha256 mismatch).
    `counted`: this process found it (False: it read another process's recent verdict).
    `unreachable`: its source did not answer (the data may be fine; remote.FetchError)."""

    def __init__(self, reason: str, counted: bool = True, unreachable: bool = False):
        super().__init__(reason)
        self.counted, self.unreachable = counted, unreachable


@dataclasses.dataclass
class Opened:
    fh: BinaryIO  # for a cached shard: holds a shared flock, which pins it in the cache
    table: np.ndarray  # the n + 1 sample offsets


def _lock(fh, mode: int) -> bool:
    try:
        fcntl.flock(fh.fileno(), mode)
        return True
    except BlockingIOError:
        return False


class ShardCache:
    """Picklable (paths and numbers only): each DataLoader worker gets its own copy and counters."""

    def __init__(self, root: str | None = None, max_bytes: int = 100 << 30, *, retries: int = 3,
                 timeout: float = 60.0):
        self.root = os.path.abspath(os.path.expanduser(root or default_cache_dir()))
        self.max_bytes, self.retries, self.timeout = int(max_bytes), retries, timeout
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._verified: set[str] = set()
        self._warned_full = False
        self._lock = threading.Lock()  # the prefetch thread and the stream both count

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    @classmethod
    def from_config(cls, cfg) -> ShardCache:
        return cls(cfg.cache_dir, int(cfg.cache_max_gb * 1e9), retries=cfg.fetch_retries, timeout=cfg.fetch_timeout_s)

    def check_writable(self) -> None:
        """At start, for runs with remote sources: the cache must be a writable directory."""
        try:
            os.makedirs(os.path.join(self.root, "shards"), exist_ok=True)
            probe = os.path.join(self.root, "shards", f".probe-{os.getpid()}")
            open(probe, "w").close()
            os.remove(probe)
        except OSError as exc:
            raise DataError(f"shard cache {self.root!r} is not writable ({exc.strerror or exc}); "
                            "set data.cache_dir") from None

    def open(self, shard: ShardInfo) -> Opened:
        """The shard's file and offsets, downloaded or verified first if needed.
        Raises ShardFailed (skip the shard), OSError (cannot open) or DataError (broken index)."""
        if remote.is_remote(shard.path):
            return self._open_remote(shard)
        if shard.sha256 and shard.path not in self._verified:
            self._verify_local(shard)
        fh = open(shard.path, "rb")
        try:
            return Opened(fh, shard.offset_table())
        except BaseException:
            fh.close()
            raise

    # --- local shards: sha256 once per node and file version
    def _verify_local(self, shard: ShardInfo) -> None:
        st = os.stat(shard.path)
        ident = f"{shard.path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{shard.sha256}"
        marker = os.path.join(self.root, "verified", hashlib.sha256(ident.encode()).hexdigest())
        if not os.path.exists(marker):
            digest = sha256_file(shard.path)
            if digest != shard.sha256:
                raise ShardFailed(f"sha256 {digest[:12]}… does not match the index's {shard.sha256[:12]}… "
                                  "(the shard changed after `ptft shard` wrote it)")
            try:  # a read-only cache only costs the re-hash in the next process
                os.makedirs(os.path.dirname(marker), exist_ok=True)
                open(marker, "w").close()
            except OSError:
                pass
        self._verified.add(shard.path)

    # --- remote shards: the node-local cache
    def _paths(self, shard: ShardInfo) -> tuple[str, str]:
        key = shard.sha256 or hashlib.sha256(shard.path.encode()).hexdigest()
        base = os.path.join(self.root, "shards", key)
        return base + ".tar", base + ".idx"

    def _open_remote(self, shard: ShardInfo) -> Opened:
        tar, idx = self._paths(shard)
        base = tar[: -len(".tar")]
        fh = self._pinned(tar)
        if fh is None:
            with self._exclusive(base + ".lock"):
                fh = self._pinned(tar)  # another process may have fetched it while this one waited
                if fh is None:
                    fh = self._download_once(shard, tar, idx, base + ".failed")
                else:
                    self.count("cache_hits")
        else:
            self.count("cache_hits")
        try:
            os.utime(tar)  # last use, for LRU eviction
            local = dataclasses.replace(shard, path=tar, offsets_path=idx if shard.offsets_path else None)
            return Opened(fh, local.offset_table())
        except BaseException:
            fh.close()
            raise

    def _pinned(self, path: str):
        """`path` opened and share-locked, or None if it is absent (or was evicted meanwhile)."""
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            return None
        _lock(fh, fcntl.LOCK_SH)
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            fh.close()
            return None
        return fh

    @contextmanager
    def _exclusive(self, lock_path: str) -> Iterator[None]:
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        with open(lock_path, "a") as lf:
            fcntl.flock(lf.fileno(), fcntl.LOCK_EX)  # the holder's work is bounded by timeouts and retries
            yield

    def _download_once(self, shard: ShardInfo, tar: str, idx: str, failed: str):
        """Download under the shard's lock. A process that gives up leaves its reason for a
        while, so the processes that waited on the lock skip the shard too instead of each
        retrying it again; a later run (after the window) tries afresh, and a run started
        after an "unreachable" verdict at once."""
        window = max(60.0, self.timeout * (self.retries + 1))
        try:
            mtime = os.path.getmtime(failed)
            if time.time() - mtime < window:
                with open(failed) as f:
                    reason = f.read()
                down = reason.startswith(_UNREACHABLE)
                if not down or mtime >= STARTED:
                    raise ShardFailed(reason.removeprefix(_UNREACHABLE), counted=False, unreachable=down)
        except FileNotFoundError:
            pass
        try:
            fh = self._download(shard, tar, idx)
        except ShardFailed as exc:
            with open(failed, "w") as f:
                f.write((_UNREACHABLE if exc.unreachable else "") + str(exc))
            raise
        if os.path.exists(failed):
            os.remove(failed)
        return fh

    def _download(self, shard: ShardInfo, tar: str, idx: str):
        self._make_room(shard.bytes)
        kw = dict(timeout=self.timeout, retries=self.retries, on_retry=self._count_retry)
        try:
            if shard.offsets_path:  # the sidecar first: a visible KEY.tar always has its KEY.idx
                with open(idx + ".part", "wb") as f:
                    remote.fetch_file(shard.offsets_path, f, size=8 * (shard.samples + 1), **kw)
                os.replace(idx + ".part", idx)
            with open(tar + ".part", "w+b") as f:
                _lock(f, fcntl.LOCK_SH)  # pinned from before it becomes visible
                n = remote.fetch_file(shard.path, f, size=shard.bytes or None, sha256=shard.sha256, **kw)
                os.replace(tar + ".part", tar)
                fh = open(tar, "rb")
                _lock(fh, fcntl.LOCK_SH)
        except remote.FetchError as exc:
            for part in (tar + ".part", idx + ".part"):
                if os.path.exists(part):
                    os.remove(part)
            raise ShardFailed(str(exc), unreachable=exc.unreachable) from None
        self.count("downloads")
        self.count("download_bytes", n)
        return fh

    def _count_retry(self) -> None:
        self.count("retries")

    def _make_room(self, incoming: int) -> None:
        """Evict least recently used, unpinned shards until `incoming` more bytes fit the bound."""
        folder = os.path.join(self.root, "shards")
        os.makedirs(folder, exist_ok=True)
        with self._exclusive(os.path.join(folder, ".evict.lock")):
            entries = []
            for name in os.listdir(folder):
                if name.endswith(".tar"):
                    path = os.path.join(folder, name)
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        continue
                    idx = path[: -len(".tar")] + ".idx"
                    size = st.st_size + (os.path.getsize(idx) if os.path.exists(idx) else 0)
                    entries.append((st.st_mtime_ns, size, path, idx))
            total = sum(e[1] for e in entries)
            for _, size, path, idx in sorted(entries):
                if total + incoming <= self.max_bytes:
                    return
                try:
                    fh = open(path, "rb")
                except FileNotFoundError:
                    continue
                with fh:
                    if not _lock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB):
                        continue  # in use or prefetched by some process of the node
                    for p in (path, idx):
                        if os.path.exists(p):
                            os.remove(p)
                total -= size
                self.count("evictions")
            if total + incoming > self.max_bytes and not self._warned_full:
                self._warned_full = True
                log.warning("shard cache %s holds %.3f GB in use, over data.cache_max_gb=%.3f; "
                            "raise it for fewer downloads", self.root, (total + incoming) / 1e9, self.max_bytes / 1e9)


class Prefetcher:
    """Opens the shards a stream will need, in the order it will first need them, at most
    `ahead` shards before the stream, in a background thread.

    `take(sid)` hands over the opened shard (waiting if it is not ready yet) and frees a
    slot. The stream takes shards in the order `upcoming` yields them, so the thread never
    waits on a slot the stream could only free later.
    """

    def __init__(self, cache: ShardCache, shards: list[ShardInfo], upcoming: Iterator[int], ahead: int):
        self.cache, self.shards, self.upcoming = cache, shards, upcoming
        self._slots = threading.Semaphore(ahead)
        self._cond = threading.Condition()
        self._done: dict[int, object] = {}
        self._finished = False
        self._waiting_for_slot = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ptft-shard-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for sid in self.upcoming:
                while not self._slots.acquire(timeout=0.1):
                    with self._cond:
                        self._waiting_for_slot = True
                        self._cond.notify_all()
                    if self._stop.is_set():
                        return
                self._waiting_for_slot = False
                if self._stop.is_set():
                    return
                try:
                    result: object = self.cache.open(self.shards[sid])
                except Exception as exc:  # handed to the stream, which skips or raises
                    result = exc
                with self._cond:
                    self._done[sid] = result
                    self._cond.notify_all()
        except Exception as exc:  # computing the order failed: the stream opens shards itself
            log.warning("shard prefetch stopped: %s", exc)
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def take(self, sid: int) -> Opened | None:
        """The prefetched shard (raising what opening it raised), or None if it will not come."""
        with self._cond:
            # (waiting for a slot with `sid` not ready: the stream left the order; it opens `sid` itself)
            while sid not in self._done and not self._finished and not self._waiting_for_slot:
                self._cond.wait(0.5)
            result = self._done.pop(sid, None)
        if result is None:
            return None
        self._slots.release()
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)  # a download under way ends on its own (bounded)
        with self._cond:
            for result in self._done.values():
                if isinstance(result, Opened):
                    result.fh.close()
            self._done.clear()
