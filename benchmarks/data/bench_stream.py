"""Data stream speed: ours vs a plain webdataset + HF pipeline, and shard writing.

Cases (one JSON object each, ours and the peer measured in the same run):
- shard_write_MBps: `ptft shard` (parallel readers, index + sha256) vs a one-process
  loop into webdataset.ShardWriter, MB of shards per second.
- mlm_stream_tokens_per_s: shards -> decode -> tokenise -> pack -> mask with 2 workers,
  vs webdataset.WebDataset + the same tokenizer (PreTrainedTokenizerFast, truncation)
  + DataCollatorForLanguageModeling with 2 workers. Counts real (non-pad) tokens.
- clm_stream_tokens_per_s: ours (concatenate-and-chunk) vs the same peer.
- pretok_mlm_stream_tokens_per_s / pretok_clm_stream_tokens_per_s: ours on pre-tokenised
  shards (`ptft shard --tokenizer`: .ids members, lengths in the index, no tokenising at
  read time) vs the same peer.
- stream_vs_train_step: our MLM tokens/s vs the tokens/s a small BERT-like training
  step consumes on --device (what the stream must stay above).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time

import torch

WORDS = ("data stream shard token model train epoch batch rank worker resume sample packing mask "
         "attention layer gradient optimizer corpus document sentence language vision pixel").split()
ZH = "深度学习模型需要大量的数据进行预训练中文文本也必须能够正确地处理数据流"


def make_corpus(path: str, n_docs: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n_docs):
            n = rng.randint(20, 300)
            words = [rng.choice(WORDS) if rng.random() < 0.85 else ZH[rng.randrange(len(ZH) - 4):][:4]
                     for _ in range(n)]
            f.write(json.dumps({"text": " ".join(words)}, ensure_ascii=False) + "\n")


def emit(case, ours, peer, unit, **extra):
    print(json.dumps({"case": case, "ours": round(ours, 2), "peer": round(peer, 2),
                      "ratio": round(ours / peer, 3) if peer else None, "unit": unit, **extra}), flush=True)


def bench_write(corpus: str, root: str) -> str:
    import webdataset as wds

    from ptft_engine.data import sources
    from ptft_engine.data.shards import write_shards

    out = os.path.join(root, "ours")
    summary = write_shards([corpus], out, sources.Options(format="jsonl"), shard_bytes=1 << 20, workers=2,
                           progress=False)
    start = time.perf_counter()
    peer_dir = os.path.join(root, "peer")
    os.makedirs(peer_dir)
    with open(corpus) as f, wds.ShardWriter(os.path.join(peer_dir, "p-%06d.tar"), maxsize=1 << 20, verbose=0) as w:
        for i, line in enumerate(f):
            w.write({"__key__": f"s{i:010d}", "txt": json.loads(line)["text"]})
    peer_s = time.perf_counter() - start
    peer_bytes = sum(os.path.getsize(os.path.join(peer_dir, p)) for p in os.listdir(peer_dir))
    emit("shard_write_MBps", summary.mb_per_s, peer_bytes / 1e6 / peer_s, "MB/s",
         samples=summary.samples, shards=summary.shards)
    return out


def ours_tokens_per_s(shards, tok, objective, seq_len, batch, docs, n_batches, workers) -> float:
    from ptft_engine.data import DataConfig, build_loader

    cfg = DataConfig(shards=[shards], tokenizer=tok, seq_len=seq_len, batch_size=batch, docs_per_batch=docs,
                     num_workers=workers, prefetch_factor=4)
    loader = build_loader(cfg, objective=objective)
    it = iter(loader)
    next(it)  # worker start-up is not streaming speed
    tokens, start = 0, time.perf_counter()
    for _ in range(n_batches):
        tokens += int(next(it)["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def peer_tokens_per_s(shards, tok, seq_len, batch, n_batches, workers, mlm=True) -> float:
    import webdataset as wds
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=tok, pad_token="[PAD]", mask_token="[MASK]", cls_token="[CLS]",
                                 sep_token="[SEP]", unk_token="[UNK]")
    urls = sorted(os.path.join(shards, p) for p in os.listdir(shards) if p.endswith(".tar"))
    ds = (wds.WebDataset(urls, shardshuffle=100, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker)
          .shuffle(1000)
          .map(lambda s: hf(s["txt"].decode("utf-8"), truncation=True, max_length=seq_len)))
    collate = DataCollatorForLanguageModeling(hf, mlm=mlm, mlm_probability=0.15, return_tensors="pt")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, collate_fn=collate, num_workers=workers,
                                         prefetch_factor=4)
    it = iter(loader)
    next(it)
    tokens, start = 0, time.perf_counter()
    for _ in range(n_batches):
        tokens += int(next(it)["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def train_step_tokens_per_s(device: str, vocab: int, seq_len: int, batch: int, steps: int) -> float:
    """A small BERT-like encoder (4 layers, 256 wide) doing forward + backward + AdamW."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True)
    model = torch.nn.Sequential(torch.nn.Embedding(vocab, 256), torch.nn.TransformerEncoder(layer, 4),
                                torch.nn.Linear(256, vocab)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seq_len), device=device)

    def step():
        loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch * seq_len / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the train-step reference")
    ap.add_argument("--quick", action="store_true", help="a smaller corpus and fewer batches")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    n_docs, n_batches = (4000, 30) if args.quick else (20000, 60)
    from ptft_engine.data.tokenizer import iter_texts, train_tokenizer

    with tempfile.TemporaryDirectory() as root:
        corpus = os.path.join(root, "corpus.jsonl")
        make_corpus(corpus, n_docs)
        shards = bench_write(corpus, root)
        tok = os.path.join(root, "tokenizer.json")
        train_tokenizer(iter_texts([shards]), kind="bpe", vocab_size=4000).save(tok)
        from ptft_engine.data import sources
        from ptft_engine.data.shards import write_shards
        from ptft_engine.objectives import get_spec

        pretok = os.path.join(root, "pretok")
        write_shards([corpus], pretok, sources.Options(format="jsonl", tokenizer=tok), shard_bytes=1 << 20,
                     workers=2, progress=False)
        common = dict(seq_len=args.seq_len, batch=args.batch_size, n_batches=n_batches, workers=args.workers)
        # The machine is shared: alternate ours and the peer over several rounds and
        # compare medians, so a burst of load elsewhere hits both alike.
        rounds = 1 if args.quick else 3
        results = {}
        for objective in ("mlm", "clm"):
            ours, pre, peer = [], [], []
            for _ in range(rounds):
                peer.append(peer_tokens_per_s(shards, tok, mlm=get_spec(objective).data.mlm_mask, **common))
                ours.append(ours_tokens_per_s(shards, tok, objective, docs="auto", **common))
                pre.append(ours_tokens_per_s(pretok, tok, objective, docs="auto", **common))
            results[objective] = statistics.median(ours)
            emit(f"{objective}_stream_tokens_per_s", results[objective], statistics.median(peer), "tokens/s",
                 workers=args.workers, rounds=rounds)
            emit(f"pretok_{objective}_stream_tokens_per_s", statistics.median(pre), statistics.median(peer),
                 "tokens/s", workers=args.workers, rounds=rounds)
        step = train_step_tokens_per_s(args.device, 4000, args.seq_len, args.batch_size, 3 if args.quick else 6)
        emit("stream_vs_train_step", results["mlm"], step, "tokens/s", device=args.device,
             note="peer = tokens/s a 4-layer 256-wide encoder step consumes")


if __name__ == "__main__":
    main()
