"""Train a byte-level BPE or WordPiece tokenizer on shards or raw text files.

`ptft tokenizer train` reads texts from shard directories / index files / .tar shards
(the .txt member) or raw text files (one text per line), trains with Hugging Face
`tokenizers`, and writes OUTPUT/tokenizer.json with the special tokens
[PAD] [UNK] [CLS] [SEP] [MASK] <bos> <eos> (ids 0-6). Byte-level BPE round-trips any
UTF-8 text (Chinese included); WordPiece splits CJK characters apart as BERT does.
`ptft tokenizer encode` shows how a text is split.
"""
from __future__ import annotations

import os
import time

from ptft_engine.cli import UserError

EXAMPLE = """Examples:
  ptft tokenizer train shards/wiki --kind bpe --vocab-size 32000 --output tok/
  ptft tokenizer train corpus/ --kind wordpiece --vocab-size 30522 --lowercase --output tok-wp/
  ptft tokenizer encode --tokenizer tok/tokenizer.json "深度学习 needs data"
"""


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="{train,encode}")
    t = sub.add_parser("train", help="train a tokenizer and save tokenizer.json")
    t.add_argument("inputs", nargs="+", help="shard dirs, index.json, .tar shards, or text files/dirs")
    t.add_argument("--output", "-o", required=True, help="directory for tokenizer.json")
    t.add_argument("--kind", default="bpe", choices=["bpe", "wordpiece"])
    t.add_argument("--vocab-size", type=int, default=32000)
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--lowercase", action="store_true", help="wordpiece: lowercase the text first")
    t.add_argument("--max-texts", type=int, default=None, help="train on at most this many texts")
    e = sub.add_parser("encode", help="print the tokens and ids of a text")
    e.add_argument("--tokenizer", required=True, help="tokenizer.json or its directory")
    e.add_argument("text")


def run(args) -> int:
    from itertools import islice

    from ptft_engine.data.tokenizer import iter_texts, load_tokenizer, train_tokenizer

    if args.action == "encode":
        info = load_tokenizer(args.tokenizer)
        enc = info.tokenizer.encode(args.text, add_special_tokens=False)
        print(" ".join(enc.tokens))
        print(" ".join(map(str, enc.ids)))
        return 0
    if args.vocab_size < 64:
        raise UserError(f"--vocab-size {args.vocab_size} is too small (at least 64)")
    counted = 0

    def texts():
        nonlocal counted
        for text in islice(iter_texts(args.inputs), args.max_texts):
            counted += 1
            yield text

    start = time.perf_counter()
    tok = train_tokenizer(texts(), kind=args.kind, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                          lowercase=args.lowercase)
    if counted == 0:
        raise UserError(f"no texts found in {args.inputs}")
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "tokenizer.json")
    tok.save(path)
    load_tokenizer(path)  # fail now, not at training time, if a role token went missing
    print(f"trained {args.kind} tokenizer on {counted} texts in {time.perf_counter() - start:.1f} s: "
          f"vocab {tok.get_vocab_size()} -> {path}")
    return 0
