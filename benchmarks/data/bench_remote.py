"""Remote shards (HTTP on loopback, through the node-local cache) vs the same shards on a
local path, and how long steps wait on downloads once the prefetcher is ahead.

Cases (one JSON object each; ours and the peer alternate within each round, medians):
- remote_cold_tokens_per_s: a whole epoch over HTTP into an empty cache, vs local.
- remote_warm_tokens_per_s: the next epoch, every shard already cached, vs local.
- remote_wait_ms_per_step: over a server throttled to --mbps, the mean time a step
  waited for a shard after the first 2 x workers steps (the prefetcher's head start),
  with prefetch (ours, data.prefetch_shards=auto) vs without (peer, prefetch_shards=0).
  Extra fields: the same run's first-steps wait and the epoch's total.

Tokens are real (non-pad) tokens of (batch, seq_len) CLM batches, 2 workers.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_stream import emit, make_corpus  # noqa: E402


class _Throttled(SimpleHTTPRequestHandler):
    """Serves a folder; with server.bytes_per_s set, sends at most that rate per response."""

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        rate = self.server.bytes_per_s
        if not rate:
            return super().copyfile(source, outputfile)
        start, sent = time.perf_counter(), 0
        while chunk := source.read(64 << 10):
            outputfile.write(chunk)
            sent += len(chunk)
            ahead = sent / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)


def run_epoch(spec: str, tok: str, cache: str, args, **kw) -> dict:
    from ptft_engine.data import DataConfig, build_loader

    cfg = DataConfig(shards=[spec], tokenizer=tok, seq_len=args.seq_len, batch_size=args.batch_size,
                     docs_per_batch=args.docs, packing="batch", num_workers=args.workers,
                     shuffle_buffer=args.shuffle_buffer,
                     cache_dir=cache, **kw)
    loader = build_loader(cfg, objective="clm")
    waits, tokens, last = [], 0, 0
    start = time.perf_counter()
    for batch in loader:
        tokens += int(batch["attention_mask"].sum())
        now = loader.stats.get("download_wait_ms", 0)
        waits.append(now - last)
        last = now
    seconds = time.perf_counter() - start
    head = 2 * args.workers
    return {"tokens_per_s": tokens / seconds, "first_wait_ms": sum(waits[:head]),
            "steady_wait_ms_per_step": sum(waits[head:]) / max(1, len(waits) - head), "total_wait_ms": sum(waits),
            "downloads": loader.stats.get("downloads", 0), "cache_hits": loader.stats.get("cache_hits", 0),
            "steps": len(waits)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller corpus, one round")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--docs", type=int, default=12, help="documents packed per batch")
    ap.add_argument("--shuffle-buffer", type=int, default=500)
    ap.add_argument("--shard-kb", type=int, default=256)
    ap.add_argument("--mbps", type=float, default=5.0,
                    help="server rate (MB/s) of the wait case: above what the stream consumes")
    args = ap.parse_args()
    n_docs, rounds = (2000, 1) if args.quick else (6000, 3)

    from ptft_engine.data import sources
    from ptft_engine.data.shards import write_shards
    from ptft_engine.data.tokenizer import iter_texts, train_tokenizer

    with tempfile.TemporaryDirectory() as root:
        corpus = os.path.join(root, "corpus.jsonl")
        make_corpus(corpus, n_docs)
        summary = write_shards([corpus], os.path.join(root, "www", "shards"), sources.Options(format="jsonl"),
                               shard_bytes=args.shard_kb << 10, workers=2, progress=False)
        local = os.path.join(root, "www", "shards")
        tok = os.path.join(root, "tokenizer.json")
        train_tokenizer(iter_texts([local]), kind="bpe", vocab_size=2000).save(tok)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Throttled, directory=os.path.join(root, "www")))
        httpd.daemon_threads, httpd.bytes_per_s = True, 0
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/shards/"
        meta = dict(shards=summary.shards, shard_kb=args.shard_kb, workers=args.workers, rounds=rounds)

        # each round runs local, cold, warm, warm, cold, local (ABBA): a drift in the load
        # of the shared machine falls on ours and the peer alike
        local_runs, cold, warm = [], [], []
        for r in range(rounds):
            for step, kind in enumerate(("local", "cold", "warm", "warm", "cold", "local")):
                cache = os.path.join(root, f"cache{r}-{step if kind == 'cold' else 1}")
                if kind == "local":
                    local_runs.append(run_epoch(local, tok, os.path.join(root, "local-cache"), args))
                else:
                    res = run_epoch(url, tok, cache, args)
                    assert res["downloads"] == (summary.shards if kind == "cold" else 0)
                    (cold if kind == "cold" else warm).append(res)
        local_tps = statistics.median(r["tokens_per_s"] for r in local_runs)
        emit("remote_cold_tokens_per_s", statistics.median(r["tokens_per_s"] for r in cold), local_tps, "tokens/s",
             **meta, wait_ms_total=statistics.median(r["total_wait_ms"] for r in cold))
        emit("remote_warm_tokens_per_s", statistics.median(r["tokens_per_s"] for r in warm), local_tps, "tokens/s",
             **meta, wait_ms_total=statistics.median(r["total_wait_ms"] for r in warm))

        httpd.bytes_per_s = args.mbps * 1e6
        ours, peer = [], []
        for r in range(rounds):
            peer.append(run_epoch(url, tok, os.path.join(root, f"np{r}"), args, prefetch_shards=0))
            ours.append(run_epoch(url, tok, os.path.join(root, f"pf{r}"), args))
        emit("remote_wait_ms_per_step", statistics.median(r["steady_wait_ms_per_step"] for r in ours),
             statistics.median(r["steady_wait_ms_per_step"] for r in peer), "ms/step", **meta, server_MBps=args.mbps,
             first_steps_wait_ms=statistics.median(r["first_wait_ms"] for r in ours),
             total_wait_ms=statistics.median(r["total_wait_ms"] for r in ours),
             peer_total_wait_ms=statistics.median(r["total_wait_ms"] for r in peer),
             tokens_per_s=statistics.median(r["tokens_per_s"] for r in ours),
             peer_tokens_per_s=statistics.median(r["tokens_per_s"] for r in peer))
        httpd.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
