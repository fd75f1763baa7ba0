"""Train and load tokenizers (Hugging Face `tokenizers`): byte-level BPE or WordPiece.

Every tokenizer we train carries the same special tokens at the same ids, so MLM and
causal LM objectives both find what they need, and the saved tokenizer.json travels
with checkpoints and exports. Byte-level BPE round-trips any UTF-8 text exactly
(Chinese included); WordPiece splits CJK characters apart, as BERT does.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ptft_engine.data.errors import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<bos>", "<eos>"]
# The one table of special-token roles: role -> the names tokenizers give it, preferred
# first (ours, then other families', so a foreign tokenizer.json works too).
SPECIAL_TOKEN_ROLES = {
    "pad": ["[PAD]", "<pad>"], "unk": ["[UNK]", "<unk>"], "cls": ["[CLS]", "<s>", "<bos>"],
    "sep": ["[SEP]", "</s>", "<eos>"], "mask": ["[MASK]", "<mask>"],
    "bos": ["<bos>", "<s>", "[CLS]", "<|endoftext|>"], "eos": ["<eos>", "</s>", "<|endoftext|>", "[SEP]"],
}
# Names in that table that only stand in for a role (another role's token doing its job):
# the engine uses them, but a Hugging Face tokenizer_config names a role with its own token only.
_STAND_INS = {"cls": ("<s>", "<bos>"), "sep": ("</s>", "<eos>"), "bos": ("[CLS]",), "eos": ("[SEP]",)}


def role_names(role: str, *, own_only: bool = False) -> list[str]:
    """The names of `role` (see SPECIAL_TOKEN_ROLES), preferred first."""
    stand_ins = _STAND_INS.get(role, ()) if own_only else ()
    return [n for n in SPECIAL_TOKEN_ROLES[role] if n not in stand_ins]


def role_tokens(vocab: dict[str, int], *, own_only: bool = False) -> dict[str, str | None]:
    """role -> the first of its names that `vocab` (token -> id) holds, or None."""
    return {role: next((n for n in role_names(role, own_only=own_only) if n in vocab), None)
            for role in SPECIAL_TOKEN_ROLES}


def role_ids(vocab: dict[str, int]) -> dict[str, int | None]:
    """role -> its token's id in `vocab`, or None."""
    return {role: None if name is None else vocab[name] for role, name in role_tokens(vocab).items()}


def _build(kind: str, lowercase: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose bpe or wordpiece")
    return tok


def _trainer(kind: str, vocab_size: int, min_frequency: int):
    from tokenizers import pre_tokenizers, trainers

    if kind == "bpe":
        return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    return trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                     special_tokens=SPECIAL_TOKENS, show_progress=False)


def iter_texts(inputs: list[str], text_field: str = "txt") -> Iterator[str]:
    """Texts from shards (index files, shard dirs, .tar) or raw text files (one text per line)."""
    from ptft_engine.data.index import INDEX_NAME, read_members, resolve_source

    for spec in inputs:
        is_shards = spec.endswith((".tar", ".json")) or os.path.exists(os.path.join(spec, INDEX_NAME)) or (
            os.path.isdir(spec) and any(p.endswith(".tar") for p in os.listdir(spec)))
        if is_shards:
            for shard in resolve_source(spec).shards:
                with open(shard.path, "rb") as fh:
                    table = shard.offset_table()
                    for i in range(shard.samples):
                        try:
                            data = read_members(fh, table, i).get(text_field)
                        except ValueError:
                            continue  # damaged sample: the tokenizer can do without it
                        if data:
                            yield data.decode("utf-8", errors="replace")
            continue
        paths = [spec] if os.path.isfile(spec) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(spec) for f in fs) if os.path.isdir(spec) else []
        if not paths:
            raise FileNotFoundError(f"tokenizer input {spec!r} does not exist")
        for path in paths:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.strip():
                        yield line.rstrip("\n")


def add_post_processor(tok) -> bool:
    """Give a WordPiece tokenizer without one BERT's template, [CLS] A [SEP] (pairs:
    [CLS] A [SEP] B [SEP], B with type id 1), so transformers' tokenizers add the special
    tokens the model was trained with. Returns whether it set one.

    Byte-level BPE is left without: a causal prompt must not end in <eos>, and whether a
    run put <bos> first is the data config's choice (data.add_bos), not the tokenizer's.
    The engine's own pipeline is unaffected either way: it encodes with
    add_special_tokens=False and packs the special tokens itself.
    """
    from tokenizers import models, processors

    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if tok.post_processor is not None or not isinstance(tok.model, models.WordPiece) or None in (cls, sep):
        return False
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return True


def _continuation_pieces(tok, texts: list[str]) -> list[str]:
    """The sorted "##c" pieces (c: a character that occurs inside a word) of `texts`,
    seen through `tok`'s own normalizer and pre-tokenizer."""
    chars: set[str] = set()
    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            chars.update(word[1:])
    return ["##" + c for c in sorted(chars)]


def _as_plain_vocab(tok, pieces: list[str]):
    """`tok` with `pieces` kept at their ids as ordinary vocabulary, not added tokens
    (an added token would be matched in raw text and dropped by skip_special_tokens)."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    drop = set(pieces)
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in drop]
    return Tokenizer.from_str(json.dumps(spec))


def train_tokenizer(texts: Iterable[str], *, kind: str = "bpe", vocab_size: int = 32000, min_frequency: int = 2,
                    lowercase: bool = False):
    """Train a tokenizer; the same texts give the same tokenizer.json in every process.

    WordPiece needs help for that: the `tokenizers` trainer numbers the "##c" continuation
    pieces in the iteration order of a Rust HashMap, which is seeded per process, and merges
    of equal count are then ranked by those ids, so the vocabulary itself changed from run
    to run (and a fine-tuning result with it). Handing the trainer the sorted pieces right
    after the special tokens fixes their ids; they are then made plain vocabulary again.
    Byte-level BPE starts from the fixed 256-byte alphabet and is deterministic as it is.
    """
    tok = _build(kind, lowercase)
    trainer = _trainer(kind, vocab_size, min_frequency)
    pieces: list[str] = []
    if kind == "wordpiece":
        texts = list(texts)  # read twice: once for the pieces, once to train
        pieces = _continuation_pieces(tok, texts)
        trainer.special_tokens = [*SPECIAL_TOKENS, *pieces]
    tok.train_from_iterator(texts, trainer=trainer)
    if pieces:
        tok = _as_plain_vocab(tok, pieces)
    add_post_processor(tok)  # the special-token ids exist only after training
    return tok


@dataclass
class TokenizerInfo:
    """A loaded tokenizer and the ids of the roles the objectives need."""

    tokenizer: object
    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    bos_id: int
    eos_id: int
    unk_id: int | None
    special_ids: list[int]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def tokenizer_file(path: str) -> str:
    """A tokenizer.json path, or a directory holding one -> the file's path."""
    return os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path


def load_tokenizer(path: str) -> TokenizerInfo:
    from tokenizers import Tokenizer

    path = tokenizer_file(path)
    if not os.path.exists(path):
        raise DataError(f"tokenizer file {path!r} does not exist (train one with `ptft tokenizer train`)")
    tok = Tokenizer.from_file(path)
    vocab = tok.get_vocab(with_added_tokens=True)
    ids = role_ids(vocab)
    for role in ("pad", "cls", "sep", "mask", "eos"):
        if ids[role] is None:
            raise DataError(f"tokenizer {path!r} has no {role} token (looked for {SPECIAL_TOKEN_ROLES[role]})")
    added = tok.get_added_tokens_decoder()  # {id: AddedToken}
    special = sorted({i for i in ids.values() if i is not None} | {i for i, t in added.items() if t.special})
    return TokenizerInfo(tokenizer=tok, vocab_size=tok.get_vocab_size(with_added_tokens=True), pad_id=ids["pad"],
                         cls_id=ids["cls"], sep_id=ids["sep"], mask_id=ids["mask"], bos_id=ids["bos"] or ids["cls"],
                         eos_id=ids["eos"], unk_id=ids["unk"], special_ids=special)

