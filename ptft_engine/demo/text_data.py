"""Text that installs with the packages: docstrings of the standard library and of the
installed scientific stack, plus Python's help topics (pydoc_data).

Labelled task: which of eight packages a docstring comes from (numpy, scipy, sklearn,
torch, sympy, networkx, matplotlib, transformers), with every package name and its
usual aliases replaced by one placeholder word, so a docstring's own name is no cue.

Hold-out: the labelled docstrings come from whole source files, drawn at random per
package until they hold enough docstrings; nothing of those files goes into the pre-training corpus,
and a corpus text whose first words equal a labelled text's is dropped too (packages copy docstrings between files).
"""
from __future__ import annotations

import json
import random
import re
import sysconfig
from pathlib import Path

PACKAGES = ("numpy", "scipy", "sklearn", "torch", "sympy", "networkx", "matplotlib", "transformers")
# names that give the package away: replaced everywhere (corpus too) by one neutral word
_NAMES = re.compile(r"\b(?:numpy|np|scipy|sp|sklearn|scikit-learn|scikit|torch|pytorch|sympy|networkx|nx|"
                    r"matplotlib|mpl|pyplot|plt|transformers|hugging ?face|hf)\b(?:\.\w+)*", re.I)
PLACEHOLDER = "pkg"
# a docstring: a triple-quoted string opening a line (a regex is ~20x faster than ast here)
_DOCSTRING = re.compile(r'(?:^|\n)[ \t]*[rRuU]?"""(.*?)"""', re.S)
MIN_WORDS = 12
LABELLED_WORDS = 40          # a labelled text is a docstring's first 40 words (~ what 64 tokens hold)


def clean(text: str) -> str:
    return " ".join(_NAMES.sub(PLACEHOLDER, text).split())


def docstrings(root: Path) -> dict[str, list[str]]:
    """{relative file: its docstrings (>= MIN_WORDS words, not yet cleaned)} under a folder."""
    found: dict[str, list[str]] = {}
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root).parts[:-1]
        if "test" in parts or "tests" in parts or "site-packages" in parts:
            continue  # test code says little in prose, and the stdlib's site-packages is another corpus
        docs = [d for d in _DOCSTRING.findall(f.read_text(encoding="utf-8", errors="ignore"))
                if len(d.split()) >= MIN_WORDS]
        if docs:
            found[str(f.relative_to(root))] = docs
    return found


def _key(text: str) -> str:
    return " ".join(text.lower().split()[:LABELLED_WORDS // 2])


def write_text_task(root: Path, per_class: dict[str, int], seed: int = 0, packages: tuple[str, ...] = PACKAGES,
                    corpus_chars: int | None = None, stdlib: bool = True) -> dict:
    """Writes root/{train,val,test}.jsonl ({"text", "label"}) and root/corpus{,_val}.jsonl ({"text"}).

    per_class: labelled docstrings per package and split, e.g. {"train": 400, "val": 50, "test": 150}.
    corpus_chars: stop the corpus there (quick runs); stdlib: add the standard library's
    docstrings and help topics. corpus_val.jsonl (1 %, at most 400 texts) measures the
    pre-training's validation loss.
    """
    site = Path(sysconfig.get_paths()["purelib"])
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {name: [] for name in per_class}
    corpus: list[str] = []
    need = sum(per_class.values())
    for pkg in packages:
        folder = site / pkg
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: package {pkg} is not installed (pip install -e '.[all]')")
        files = docstrings(folder)
        names = sorted(files)
        rng.shuffle(names)
        held, pool = [], {}
        for f in names:  # whole files, in random order, until they hold enough docstrings
            if len(pool) >= need:
                break
            held.append(f)
            pool.update(dict.fromkeys(files[f]))
        if len(pool) < need:
            raise ValueError(f"{pkg}: only {len(pool)} docstrings in its files, the task needs {need}")
        pool = list(pool)
        rng.shuffle(pool)
        start = 0
        for name, n in per_class.items():
            splits[name] += [{"text": clean(" ".join(d.split()[:LABELLED_WORDS])), "label": pkg}
                             for d in pool[start:start + n]]
            start += n
        corpus += [d for f in names[len(held):] for d in files[f]]
    if stdlib:
        corpus += [d for docs in docstrings(Path(sysconfig.get_paths()["stdlib"])).values() for d in docs]
        from pydoc_data.topics import topics

        corpus += [p for t in topics.values() for p in t.split("\n\n") if len(p.split()) >= MIN_WORDS]
    corpus = list(dict.fromkeys(corpus))
    random.Random(seed + 1).shuffle(corpus)
    labelled = {_key(r["text"]) for recs in splits.values() for r in recs}
    kept, total = [], 0
    for d in corpus:  # cleaned only as far as the budget goes: the name regex is the slow part
        if corpus_chars is not None and total >= corpus_chars:
            break
        d = clean(d)
        if _key(d) not in labelled:
            kept.append(d)
            total += len(d)
    corpus = list(dict.fromkeys(kept))
    n_val = min(400, max(1, len(corpus) // 100))
    root.mkdir(parents=True, exist_ok=True)
    for name, recs in splits.items():
        random.Random(seed + 2).shuffle(recs)
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for name, docs in (("corpus_val", corpus[:n_val]), ("corpus", corpus[n_val:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return {"corpus_docs": len(corpus) - n_val, "corpus_val_docs": n_val, "corpus_chars": sum(map(len, corpus[n_val:])),
            **{name: len(recs) for name, recs in splits.items()}}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def count_tokens(corpus: Path, tokenizer: Path) -> int:
    """Tokens of a JSONL corpus under a trained tokenizer (no special tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    texts = [r["text"] for r in read_jsonl(corpus)]
    return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
