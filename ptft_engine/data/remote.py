"""Remote shard locations: `http(s)://`, `s3://`, `gs://` URLs and `pipe:CMD` commands.

The transport is webdataset's `Pipe` (a subprocess whose exit status is checked) over
the tools webdataset's `gopen` uses: curl for http(s), the aws CLI for s3, gsutil for
gs, a shell for `pipe:`. Each tool finds its own credentials (environment, ~/.netrc,
~/.aws, the gcloud config); this module never sees one, and every location it puts in
a message goes through `redact` first.

Every read is bounded: a stall of `timeout` seconds without a byte kills the command,
and a source sending more bytes than the index promises is cut off. Retrying is the
caller's choice (`fetch_bytes` / `fetch_file` take `retries`).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

from braceexpand import braceexpand

REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "pipe:")
_CHUNK = 1 << 20
_URL_SECRET = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@")  # scheme://user:pass@ -> scheme://
_URL_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"]*)[?#][^\s'\"]*")  # drop ?query and #fragment
_SHARD_TOKEN = re.compile(r"\S+\.(?:tar|json)(?=$|[\s'\";|])")


# curl exit statuses of a source that did not answer: resolve (6), connect (7), timeout (28),
# SSL connect (35), empty reply (52), send/receive failure (55, 56); a proxy's 5 too
_CURL_UNREACHABLE = {5, 6, 7, 28, 35, 52, 55, 56}
_HTTP_STATUS = re.compile(r"\b(?:error|status)[: ]+([1-5]\d\d)\b", re.IGNORECASE)
_TOOL_UNREACHABLE = re.compile(r"could not connect|connection refused|timed out|temporary failure in name|"
                               r"name or service not known|serviceunavailable|slowdown|internalerror", re.IGNORECASE)
_TOOL_MISSING = re.compile(r"nosuchkey|not found|no urls matched|no such file|does not exist", re.IGNORECASE)


class FetchError(OSError):
    """A remote read that failed (exit status, stall, size or sha256 mismatch); message redacted.

    `unreachable`: the source did not answer (connection refused or timed out, a 5xx): the
    data is fine, the source is down. `missing`: it answered that the file is not there (404)."""

    def __init__(self, message: str, *, unreachable: bool = False, missing: bool = False):
        super().__init__(message)
        self.unreachable, self.missing = unreachable, missing

    def __reduce__(self):
        return _fetch_error, (str(self), self.unreachable, self.missing)


def _fetch_error(message: str, unreachable: bool, missing: bool) -> FetchError:
    return FetchError(message, unreachable=unreachable, missing=missing)


def _classify(tool: str, status: int | None, stderr: str) -> dict[str, bool]:
    """Whether a failed transfer means an unreachable source or a missing file (else: neither)."""
    code = _HTTP_STATUS.search(stderr)
    http = int(code.group(1)) if code else None
    if tool == "curl":
        if status in _CURL_UNREACHABLE or (status == 22 and http is not None and http >= 500):
            return {"unreachable": True}
        return {"missing": status == 22 and http in (404, 410)}
    if (http is not None and http >= 500) or _TOOL_UNREACHABLE.search(stderr):
        return {"unreachable": True}
    return {"missing": http in (404, 410) or bool(_TOOL_MISSING.search(stderr))}


def is_remote(spec: str) -> bool:
    return str(spec).startswith(REMOTE_PREFIXES)


def has_braces(spec: str) -> bool:
    return "{" in spec and "}" in spec


def expand(spec: str) -> list[str]:
    """Brace ranges as webdataset writes them: shard-{000000..000127}.tar -> 128 names."""
    return list(braceexpand(spec)) if has_braces(spec) else [spec]


def redact(text: str) -> str:
    """`text` with the user info, query and fragment of every URL in it removed."""
    return _URL_QUERY.sub(r"\1", _URL_SECRET.sub(r"\1", str(text)))


def has_user_info(spec: str) -> bool:
    return bool(_URL_SECRET.search(str(spec)))


def _shard_token(command: str) -> re.Match:
    matches = list(_SHARD_TOKEN.finditer(command))
    if not matches:
        raise ValueError(f"pipe: command {redact(command)!r} names no .tar or .json file")
    return matches[-1]


def sibling(location: str, name: str) -> str:
    """The location of `name`, a path relative to the directory of `location`.

    For `pipe:CMD` the last word of CMD ending in .tar or .json is the file: the
    sibling's command is CMD with that word replaced.
    """
    if location.startswith("pipe:"):
        m = _shard_token(location)
        path = posixpath.normpath(posixpath.join(posixpath.dirname(m.group(0)), name))
        return location[: m.start()] + path + location[m.end():]
    parts = urlsplit(location)
    path = posixpath.normpath(posixpath.join(posixpath.dirname(parts.path), name))
    return urlunsplit(parts._replace(path=path))


def _file_part(spec: str) -> str:
    return _shard_token(spec).group(0) if spec.startswith("pipe:") else urlsplit(spec).path


def file_name(location: str) -> str:
    """shard-000003.tar for .../shard-000003.tar?sig=… or `pipe:cat /d/shard-000003.tar`."""
    return posixpath.basename(_file_part(location))


def names_tar(spec: str) -> bool:
    return _file_part(spec).endswith(".tar")


def index_location(spec: str, index_name: str) -> str:
    """Where the index of a source lives: the spec itself (.json), beside it (.tar) or inside it (a folder)."""
    tail = _file_part(spec)
    if tail.endswith(".json"):
        return spec
    if tail.endswith(".tar"):
        return sibling(spec, index_name)
    return sibling(spec.rstrip("/") + "/", index_name)


def command(location: str, timeout: float) -> list[str]:
    """The argv that writes `location`'s bytes to stdout."""
    if location.startswith("pipe:"):
        return ["sh", "-c", location[len("pipe:"):]]
    if location.startswith(("http://", "https://")):
        # -f: an HTTP error is an exit status, not a body; --netrc-optional: credentials from ~/.netrc
        argv = ["curl", "-fsSL", "--netrc-optional", "--connect-timeout", str(max(1, int(timeout))), location]
    elif location.startswith("s3://"):
        argv = ["aws", "s3", "cp", "--only-show-errors", location, "-"]
    elif location.startswith("gs://"):
        argv = ["gsutil", "-q", "cat", location]
    else:
        raise ValueError(f"{redact(location)!r} is not a remote location ({', '.join(REMOTE_PREFIXES)})")
    if shutil.which(argv[0]) is None:
        raise FetchError(f"reading {redact(location)} needs `{argv[0]}` on PATH")
    return argv


def _stream(location: str, out: BinaryIO, *, timeout: float, max_bytes: int | None) -> tuple[int, str]:
    """Copy one location into `out`; returns (bytes, sha256 hex). Raises FetchError."""
    from webdataset.gopen import Pipe

    argv = command(location, timeout)
    sha, n = hashlib.sha256(), 0
    with tempfile.TemporaryFile() as err:
        try:
            pipe = Pipe(argv, mode="rb", bufsize=0, timeout=timeout, stderr=err, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise FetchError(f"cannot start `{argv[0]}` for {redact(location)}: {exc.strerror or exc}") from None
        fd = pipe.stream.fileno()
        try:
            while True:
                ready, _, _ = select.select([fd], [], [], timeout)
                if not ready:
                    raise FetchError(f"{redact(location)}: no data for {timeout:g} s (timed out)", unreachable=True)
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    break
                n += len(chunk)
                if max_bytes is not None and n > max_bytes:
                    raise FetchError(f"{redact(location)}: more than the {max_bytes} bytes the index lists")
                sha.update(chunk)
                out.write(chunk)
            try:
                pipe.close()  # waits for the command and raises on a failing exit status
            except (OSError, subprocess.TimeoutExpired):
                err.seek(0)
                text = err.read().decode(errors="replace")
                lines = text.strip().splitlines()
                why = redact(lines[-1]) if lines else "no message"
                raise FetchError(f"{redact(location)}: `{argv[0]}` failed (exit {pipe.proc.returncode}: {why})",
                                 **_classify(argv[0], pipe.proc.returncode, text)) from None
        finally:
            if pipe.proc.poll() is None:
                pipe.proc.kill()
                pipe.proc.wait()
    return n, sha.hexdigest()


def _retrying(attempt: Callable[[], object], retries: int, on_retry: Callable[[], None] | None):
    delay = 0.2
    for k in range(retries + 1):
        try:
            return attempt()
        except FetchError as exc:
            if k == retries:
                raise FetchError(f"{exc} (gave up after {retries + 1} attempts)", unreachable=exc.unreachable,
                                 missing=exc.missing) from None
            if on_retry is not None:
                on_retry()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def fetch_bytes(location: str, *, timeout: float, retries: int, max_bytes: int = 1 << 30) -> bytes:
    """All bytes of a small remote file (an index), retried with backoff."""
    import io

    def attempt() -> bytes:
        buf = io.BytesIO()
        _stream(location, buf, timeout=timeout, max_bytes=max_bytes)
        return buf.getvalue()

    return _retrying(attempt, retries, None)


def fetch_file(location: str, dest: BinaryIO, *, timeout: float, retries: int, size: int | None = None,
               sha256: str | None = None, on_retry: Callable[[], None] | None = None) -> int:
    """Write `location` into the open file `dest` (rewritten on each attempt), checking the
    size and sha256 when given; retried with backoff. Returns the byte count."""

    def attempt() -> int:
        dest.seek(0)
        dest.truncate()
        n, digest = _stream(location, dest, timeout=timeout, max_bytes=size or None)
        if size and n != size:
            raise FetchError(f"{redact(location)}: got {n} bytes, the index lists {size} (connection cut?)")
        if sha256 and digest != sha256:
            raise FetchError(f"{redact(location)}: sha256 {digest[:12]}… does not match the index's {sha256[:12]}…")
        dest.flush()
        return n

    return _retrying(attempt, retries, on_retry)
