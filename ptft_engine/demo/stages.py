"""Numbered, timed stages; CLI commands run in this process, pre-training under the
launcher (launch/local.sh) with its output filtered down to the progress."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from ptft_engine.cli import UserError

REPO = Path(__file__).resolve().parents[2]
# launcher and library chatter that says nothing to a newcomer (kept in the log file)
_NOISE = re.compile(r"\[(INFO|WARNING)\]|^INFO |Warning|warnings\.warn|return func\(|^\s*$|^\[rank\d\]:\s*$")


class Stages:
    def __init__(self, total: int, out: Path):
        self.total, self.out, self.n = total, out, 0
        self.timings: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, title: str, what: str = ""):
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {title}" + (f" — {what}" if what else ""), flush=True)
        start = time.perf_counter()
        yield
        took = time.perf_counter() - start
        self.timings[title] = round(took, 1)
        print(f"    done in {took:.1f} s (total {time.perf_counter() - self.t0:.0f} s)", flush=True)

    def save(self) -> dict:
        record = {"stages_s": self.timings, "total_s": round(time.perf_counter() - self.t0, 1)}
        (self.out / "timings.json").write_text(json.dumps(record, indent=1))
        return record


class _Indented(io.TextIOBase):
    """Indents what an in-process command prints, so it reads as part of its stage."""

    def __init__(self, target, prefix: str = "      "):
        self.target, self.prefix, self.at_line_start = target, prefix, True

    def write(self, text: str) -> int:
        for part in text.splitlines(keepends=True):
            if self.at_line_start:
                self.target.write(self.prefix)
            self.target.write(part)
            self.at_line_start = part.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()


def show_command(args: list[str], prefix: str = "ptft") -> None:
    print("    $ " + " ".join([prefix, *map(shlex.quote, args)]), flush=True)


def ptft(*args: str) -> None:
    """Run one `ptft` command in this process, as a user would type it."""
    from ptft_engine import cli

    show_command(list(args))
    with contextlib.redirect_stdout(_Indented(sys.stdout)):
        rc = cli.main(list(args))
    if rc:
        raise UserError(f"`ptft {' '.join(args)}` failed (exit {rc}); see the message above")


class Launch:
    """One `launch/local.sh` run: its whole output goes to a log file; what is shown is the
    progress of rank 0 (in place on a terminal unless `quiet`) and any line that is not chatter."""

    def __init__(self, tag: str, ranks: int, config: Path, overrides: list[str], log_path: Path,
                 env: dict[str, str], quiet: bool = False):
        args = [str(ranks), "--config", str(config), *overrides]
        show_command(args, prefix="launch/local.sh")
        self.tag, self.log_path, self.quiet = tag, log_path, quiet
        self.tty = sys.stdout.isatty() and not quiet
        self.start = time.perf_counter()
        self.seconds: float | None = None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["bash", str(REPO / "launch" / "local.sh"), *args], cwd=REPO,
                                     env={**os.environ, "PYTHON": sys.executable, **env}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.tail: list[str] = []
        self.reader = threading.Thread(target=self._follow, daemon=True)
        self.reader.start()

    def _follow(self) -> None:
        last_shown, bar_open, buf = -10, False, ""
        with open(self.log_path, "w") as log:
            while True:
                chunk = self.proc.stdout.read(1)
                if not chunk:
                    break
                if chunk not in "\r\n":
                    buf += chunk
                    continue
                log.write(buf + "\n")
                self.tail = (self.tail + [buf])[-25:]
                # a log line can land right after an unfinished progress bar: keep the bar part
                line, buf = re.split(r"(?<=\S)(?:INFO|WARNING) ptft_engine", buf.strip())[0], ""
                m = re.match(r"pretrain:\s+(\d+)%", line)
                if m:  # tqdm bar of rank 0: redrawn in place on a terminal, every 10 % otherwise
                    pct = int(m.group(1))
                    if self.tty:
                        print(f"\r    [{self.tag}] " + line[:110], end="", flush=True)
                        bar_open = True
                    elif pct >= last_shown + (25 if self.quiet else 10) or (pct == 100 and last_shown < 100):
                        print(f"    [{self.tag}] " + line[:110], flush=True)
                        last_shown = pct
                elif not _NOISE.search(line) and not (self.quiet and line.startswith("INFO")):
                    print(("\n" if bar_open else "") + f"    [{self.tag}] " + line[:160], flush=True)
                    bar_open = False
        self.seconds = time.perf_counter() - self.start  # output closes when the ranks are gone
        if bar_open:
            print(flush=True)

    def wait(self) -> float:
        rc = self.proc.wait()
        self.reader.join()
        if rc != 0:
            print("\n".join(f"    [{self.tag}] | " + t for t in self.tail[-15:]), file=sys.stderr)
            raise UserError(f"pre-training ({self.tag}) failed (exit {rc}); full log: {self.log_path}")
        return self.seconds

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()


class Grid:
    """A fine-tuning grid in its own process (the second core's work while this process runs
    another): every line goes to a log file, lines that are not chatter are shown tagged."""

    def __init__(self, tag: str, cmd: list[str], log_path: Path, env: dict[str, str]):
        self.tag, self.log_path, self.start, self.seconds = tag, log_path, time.perf_counter(), None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.tail: list[str] = []
        self.reader = threading.Thread(target=self._follow, daemon=True)
        self.reader.start()

    def _follow(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                log.write(line)
                self.tail = (self.tail + [line.rstrip()])[-25:]
                if line.startswith("    ") and not _NOISE.search(line):
                    print(f"    [{self.tag}] " + line.strip(), flush=True)
        self.seconds = time.perf_counter() - self.start

    def wait(self) -> float:
        rc = self.proc.wait()
        self.reader.join()
        if rc != 0:
            print("\n".join(f"    [{self.tag}] | " + t for t in self.tail[-15:]), file=sys.stderr)
            raise UserError(f"fine-tuning grid ({self.tag}) failed (exit {rc}); full log: {self.log_path}")
        return self.seconds

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
