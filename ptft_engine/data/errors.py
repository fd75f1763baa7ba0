"""Errors and the corrupt-data policy shared by the shard reader and the writer."""
from __future__ import annotations

import logging

log = logging.getLogger("ptft_engine.data")


class DataError(ValueError):
    """A data problem a user can fix (missing shard, bad index, bad config value)."""


class CorruptSampleError(DataError):
    """A shard or member that cannot be read or decoded; names the shard and key."""

    # one message argument, so DataLoader can re-raise it in the main process as this type
    @classmethod
    def of(cls, shard: str, key: str, reason: str) -> CorruptSampleError:
        return cls(f"corrupt data in shard {shard!r}, key {key!r}: {reason} (strict mode)")


class SourceUnreachable(DataError):
    """A shard whose source did not answer (connection refused, timed out, 5xx) after the
    retries: the data is not known to be bad, it could not be read now."""


class BadSamples:
    """Counts skipped samples and logs the first few by name; in strict mode raises instead.

    Every skip is logged up to `log_limit` times so a badly broken shard cannot flood
    the log; the count keeps going. Samples of a shard whose source is unreachable are
    counted apart (`unread`, never raised here: the trainer stops on them, see the stream)
    and not logged one by one: the stream logs the shard once.
    """

    def __init__(self, strict: bool, log_limit: int = 20):
        self.strict = strict
        self.log_limit = log_limit
        self.count = 0
        self.names: list[str] = []
        self.unread = 0  # samples skipped because their source is unreachable
        self.source = ""  # the last unreachable shard and why

    def unreachable(self, shard: str, reason: str) -> None:
        self.count += 1
        self.unread += 1
        self.source = reason if reason.startswith(shard) else f"{shard}: {reason}"  # fetch errors name it

    def skip(self, shard: str, key: str, reason: str) -> None:
        if self.strict:
            raise CorruptSampleError.of(shard, key, reason)
        self.count += 1
        if len(self.names) < self.log_limit:
            self.names.append(f"{shard}:{key}")
            log.warning("skipping corrupt sample: shard %s, key %s: %s", shard, key, reason)
