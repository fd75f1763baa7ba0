"""Mutation testing, small and local: plant one bug at a time, run the nearest tests.

    .venv/bin/python tools/mutate.py                      # every module in TARGETS
    .venv/bin/python tools/mutate.py data/order.py --max 30 --list

Each mutant is one small edit of one module (a comparison or arithmetic operator
swapped, a constant off by one, True/False flipped, `and`/`or` swapped, a statement
deleted, the first two arguments of a call swapped). It is written into a scratch copy
of the tree (the working tree is never touched), the module's nearest tests run there
with `pytest -x` under a timeout, and the mutant counts as killed when they fail or
time out. Prints one line per mutant and a score per module; survivors are the
places where a plausible bug would pass the tests (or equivalent mutants: judge each).
"""
from __future__ import annotations

import argparse
import ast
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module (under ptft_engine/) -> the tests that guard it (pytest arguments)
TARGETS: dict[str, list[str]] = {
    "ops/mlm/reference.py": ["tests/ops/test_mlm.py", "-k",
                             "rederivation or known or special or edges or errors or empty or boundary or outside"],
    "ops/attention/reference.py": ["tests/ops/test_attention.py", "-k",
                                   "reference or sdpa or hand or upcast or log_sum_exp"],
    "ops/contrastive/reference.py": ["tests/ops/test_contrastive.py", "-k",
                                     "references or naive_fp32 or bad_inputs or split"],
    "data/order.py": ["tests/data/test_data_order.py"],
    "engine/checkpoint.py": ["tests/engine/test_checkpoint_kill.py"],
    "finetune/llrd.py": ["tests/finetune/test_strategies.py", "-k", "layer"],
    "finetune/freezing.py": ["tests/finetune/test_strategies.py", "-k", "freez or probe or lora_trains or every_block"],
    "export/layout.py": ["tests/export/test_hf_layout.py", "tests/export/test_hf_roundtrip.py"],
    "data/packing.py": ["tests/data/test_data_packing.py"],
}

# lines (stripped text) where every mutant is equivalent or untestable, with the reason
SKIP_LINES: dict[str, dict[str, str]] = {
    "data/order.py": {
        "_TAG_SHARDS, _TAG_BLOCK, _TAG_MIX, _TAG_RESAMPLE = 1, 2, 3, 4":
            "seed-stream tags: any values give an equally valid (different) random order",
        "self._cache.move_to_end(b)": "a cache of recent blocks: only speed depends on it",
        "self._cache[b] = (shard, sample)": "cache",
        "if len(self._cache) > 4:": "cache",
        "self._cache.popitem(last=False)": "cache",
        "if weights is None and not resample and len(sources) > 1:": "pooling a single source changes nothing",
        "self.mixed = len(self.sources) > 1": "mixing a single source is the identity",
        "if self.mixed and not resample:": "an unused prefix table is harmless",
    },
    "finetune/llrd.py": {
        'g["initial_lr"] = g["lr"]': "LambdaLR sets initial_lr itself when it is missing",
    },
    "engine/checkpoint.py": {
        "f.flush()": "durability against power loss: a killed process loses nothing from the page cache",
        "os.fsync(f.fileno())": "as above",
        "dist.barrier()": "one rank here; the multi-rank save tests (marked slow) need the barriers",
        "_barrier()": "as above",
        "_barrier()  # every rank's files are on disk before the checkpoint is declared complete": "as above",
        'state["cuda"] = torch.cuda.get_rng_state()': "CUDA only",
        'torch.cuda.set_rng_state(state["cuda"])': "CUDA only",
        'if "cuda" in state and torch.cuda.is_available():': "CUDA only",
        "json.dumps({\"step\": step, \"saved_at\": time.time(), **meta}, indent=1, default=str))": "JSON indentation",
        "shutil.rmtree(old, ignore_errors=True)": "pruning: its kill safety is the run-safety work's (issue 17)",
    },
}

SWAPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "+": "-", "-": "+",
         "*": "/", "/": "*", "//": "*", "%": "//", "<<": ">>", ">>": "<<", "&": "|", "|": "&",
         "+=": "-=", "-=": "+=", "**": "*"}
WORDS = {"and": "or", "or": "and", "True": "False", "False": "True", "is": "is not", "in": "not in"}


@dataclass
class Mutant:
    line: int  # 1-based
    col: int
    old: str
    new: str
    kind: str

    def apply(self, lines: list[str]) -> list[str]:
        out = list(lines)
        text = out[self.line - 1]
        assert text[self.col:self.col + len(self.old)] == self.old, (self, text)
        out[self.line - 1] = text[:self.col] + self.new + text[self.col + len(self.old):]
        return out

    def describe(self) -> str:
        return f"line {self.line}: {self.kind} {self.old!r} -> {self.new!r}"


def _docstring_lines(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                skip.update(range(first.lineno, first.end_lineno + 1))
    return skip


def _no_mutate_lines(tree: ast.AST) -> set[int]:
    """Imports, annotations-only lines, raise messages' f-strings and logging are left alone."""
    skip = _docstring_lines(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.update(range(node.lineno, node.end_lineno + 1))
    return skip


def _annotation_spans(tree: ast.AST) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of type annotations: `X | None` there is not code."""
    nodes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            nodes.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            nodes.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            nodes.append(node.annotation)
    return [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in nodes]


def mutants_of(source: str, skip_text: dict[str, str] | None = None) -> list[Mutant]:
    tree = ast.parse(source)
    skip = _no_mutate_lines(tree)
    lines = source.splitlines()
    skip.update(i + 1 for i, text in enumerate(lines) if text.strip() in (skip_text or {}))
    spans = _annotation_spans(tree)
    out: list[Mutant] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        (row, col), text = tok.start, tok.string
        if row in skip or tok.start[0] != tok.end[0] or any(a <= tok.start < b for a, b in spans):
            continue
        if tok.type == tokenize.OP and text in SWAPS:
            if text == "*" and _is_star_arg(lines[row - 1], col):
                continue
            if text in ("-", "+") and _is_unary(lines[row - 1], col):
                continue
            out.append(Mutant(row, col, text, SWAPS[text], "operator"))
        elif tok.type == tokenize.NAME and text in WORDS:
            out.append(Mutant(row, col, text, WORDS[text], "keyword"))
        elif tok.type == tokenize.NUMBER and text.isdigit():
            value = int(text)
            out.append(Mutant(row, col, text, str(value + 1), "constant"))
            if value > 0:
                out.append(Mutant(row, col, text, str(value - 1), "constant"))
    out += _statement_deletions(tree, lines, skip)
    out += _argument_swaps(tree, lines, skip)
    return [m for m in out if _compiles(m, lines)]


def _compiles(m: Mutant, lines: list[str]) -> bool:
    try:
        compile("\n".join(m.apply(lines)) + "\n", "<mutant>", "exec")
    except SyntaxError:
        return False
    return True


def _is_star_arg(line: str, col: int) -> bool:
    before = line[:col].rstrip()
    return before.endswith(("(", ",", "[")) or before == "" or line[col + 1:col + 2] == "*" and False


def _is_unary(line: str, col: int) -> bool:
    before = line[:col].rstrip()
    return before == "" or before[-1] in "(,[=:<>*/+-%" or before.endswith(("return", "and", "or", "not", "in", "else"))


def _statement_deletions(tree: ast.AST, lines: list[str], skip: set[int]) -> list[Mutant]:
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            body = getattr(node, "body", None)
            for stmt in body if isinstance(body, list) else []:
                if (isinstance(stmt, (ast.Assign, ast.AugAssign, ast.Expr, ast.Return, ast.Raise))
                        and stmt.lineno == stmt.end_lineno and stmt.lineno not in skip
                        and not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))):
                    text = lines[stmt.lineno - 1]
                    start = len(text) - len(text.lstrip())
                    old = text[start:]
                    if old.startswith(("log", "print", "self.logger")) or old in ("return", "return None"):
                        continue
                    new = "pass" if not isinstance(stmt, ast.Return) else "return None"
                    out.append(Mutant(stmt.lineno, start, old, new, "delete"))
    return out


def _argument_swaps(tree: ast.AST, lines: list[str], skip: set[int]) -> list[Mutant]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and len(node.args) >= 2 and node.lineno not in skip:
            a, b = node.args[0], node.args[1]
            if a.lineno != b.end_lineno or isinstance(a, ast.Starred) or isinstance(b, ast.Starred):
                continue
            text = lines[a.lineno - 1]
            seg = text[a.col_offset:b.end_col_offset]
            first, second = text[a.col_offset:a.end_col_offset], text[b.col_offset:b.end_col_offset]
            if first == second:
                continue
            sep = text[a.end_col_offset:b.col_offset]
            out.append(Mutant(a.lineno, a.col_offset, seg, second + sep + first, "swap args"))
    return out


def scratch_tree() -> Path:
    """A copy of the tracked files plus the built extension, outside the working tree."""
    dest = Path(tempfile.mkdtemp(prefix="ptft-mutate-"))
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    files += [str(p.relative_to(ROOT)) for p in (ROOT / "ptft_engine").glob("_C*.so")]
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def run_tests(tree: Path, args: list[str], timeout: float) -> tuple[str, float]:
    extra = os.environ.get("PYTHONPATH")
    pythonpath = str(tree) + (os.pathsep + extra if extra else "")
    env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout", str(int(timeout)),
           *args]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - t0
    if proc.returncode == 0:
        return "survived", time.time() - t0
    summary = proc.stdout.strip().splitlines()[-1:] or [""]
    if proc.returncode == 1 and (" failed" in summary[0] or " error" in summary[0]):
        return "killed", time.time() - t0  # a test failed (or errored, e.g. an import broke)
    # anything else (pytest itself missing, a usage error) says nothing about the mutant
    return f"invalid rc={proc.returncode}", time.time() - t0


def mutate_module(tree: Path, module: str, tests: list[str], *, max_mutants: int | None, seed: int,
                  list_only: bool) -> tuple[int, int, list[str]]:
    path = tree / "ptft_engine" / module
    original = path.read_text()
    mutants = mutants_of(original, SKIP_LINES.get(module))
    if max_mutants is not None and len(mutants) > max_mutants:
        mutants = sorted(random.Random(seed).sample(mutants, max_mutants), key=lambda m: (m.line, m.col))
    print(f"== {module}: {len(mutants)} mutants, tests: {' '.join(tests)}", flush=True)
    if list_only:
        for m in mutants:
            print("   ", m.describe())
        return 0, len(mutants), []
    status, base_s = run_tests(tree, tests, timeout=900)
    if status != "survived":
        print(f"   the tests do not pass without any mutant ({status}): skipping {module}")
        return 0, 0, []
    timeout = max(30.0, 3 * base_s + 10)
    lines = original.splitlines(keepends=False)
    killed, survivors, planted = 0, [], len(mutants)
    try:
        for m in mutants:
            path.write_text("\n".join(m.apply(lines)) + "\n")
            status, secs = run_tests(tree, tests, timeout)
            if status.startswith("invalid"):
                planted -= 1
                print(f"   INVALID  {m.describe()}  [{status}, {secs:.0f}s]: not counted", flush=True)
                continue
            ok = status != "survived"
            killed += ok
            print(f"   {'killed ' if ok else 'SURVIVED'} {m.describe()}  [{status}, {secs:.0f}s]", flush=True)
            if not ok:
                survivors.append(f"{module} {m.describe()}")
    finally:
        path.write_text(original)
    return killed, planted, survivors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help="paths under ptft_engine/ (default: every module in TARGETS)")
    ap.add_argument("--max", type=int, default=None, help="at most this many mutants per module (a seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tests", nargs=argparse.REMAINDER, help="pytest arguments instead of the TARGETS entry")
    ap.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    args = ap.parse_args(argv)
    modules = args.modules or list(TARGETS)
    unknown = [m for m in modules if not (ROOT / "ptft_engine" / m).is_file()]
    if unknown:
        ap.error(f"no such module under ptft_engine/: {', '.join(unknown)}")
    tree = scratch_tree()
    scores, all_survivors = [], []
    try:
        for module in modules:
            tests = args.tests or TARGETS.get(module)
            if not tests:
                ap.error(f"{module}: no tests known for it; pass --tests")
            killed, total, survivors = mutate_module(tree, module, tests, max_mutants=args.max, seed=args.seed,
                                                     list_only=args.list)
            scores.append((module, killed, total))
            all_survivors += survivors
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    if not args.list:
        print("\nmutation score (killed / planted):")
        for module, killed, total in scores:
            pct = 100.0 * killed / total if total else float("nan")
            print(f"  {module:34s} {killed:3d} / {total:3d}  {pct:5.1f} %")
        if all_survivors:
            print("survivors:\n  " + "\n  ".join(all_survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
