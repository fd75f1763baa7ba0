"""The loader the engine iterates: epochs, DataLoader workers, and resumable state.

The state is only (epoch, position): position counts the global samples — for packed
text (`packing: plan`) the rows of the epoch's packing plan — that all ranks together
have consumed in this epoch. Every rank yields the same number of batches,
so the state is the same on every rank, and a resume — on any world size or worker
count — continues the epoch order at that position. Packed text adds `carry`: the row
of the previous epoch's plan from which its tail (the rows after its last whole step)
opens this epoch, so the tail is trained instead of dropped.
"""
from __future__ import annotations

import math
import os
import signal
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import DataLoader

from ptft_engine.data.cache import ShardCache
from ptft_engine.data.config import DataConfig
from ptft_engine.data.errors import BadSamples, CorruptSampleError, DataError, SourceUnreachable, log
from ptft_engine.data.index import ShardIndex, resolve_source, sha256_file
from ptft_engine.data.index_columns import shard_counts
from ptft_engine.data.needs import DataNeeds
from ptft_engine.data.order import EpochOrder
from ptft_engine.data.remote import is_remote, redact
from ptft_engine.data.stream import ShardStream, steps_left

AUTO_SAMPLE_DOCS = 256
MAX_AUTO_PREFETCH = 64
STATE_VERSION = 1


def _worker_init(_: int) -> None:
    # The main process owns shutdown. A SIGTERM/SIGINT to the process group (Ctrl-C, Slurm,
    # `kill -TERM -PGID`) must not kill the workers before their rank has saved its
    # checkpoint ("DataLoader worker killed by signal"): a process group of their own keeps
    # group signals out, and SIGINT/SIGHUP are ignored. SIGTERM keeps its default action:
    # that is how the DataLoader (and multiprocessing at exit) ends a worker that does not
    # stop by itself; the rank's stop handler, inherited through fork, must not swallow it.
    try:
        os.setpgid(0, 0)
    except OSError:  # pragma: no cover - not permitted here: the ignored signals still hold
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)  # workers are many; the step owns the cores


class Loader:
    def __init__(self, cfg: DataConfig, *, objective: str, rank: int, world_size: int, epoch: int = 0,
                 split: str = "train"):
        self.needs = needs_of(objective)
        if self.needs.kind != cfg.kind:
            raise DataError(f"objective {objective!r} needs data kind {self.needs.kind!r}, "
                            f"but the data config says kind {cfg.kind!r}")
        if not (world_size >= 1 and 0 <= rank < world_size):
            raise DataError(f"rank {rank} is outside world size {world_size}")
        if split not in ("train", "eval"):
            raise DataError(f"split must be 'train' or 'eval', not {split!r}")
        specs = cfg.shards if split == "train" else cfg.eval_shards
        if not specs:
            raise DataError("no eval_shards in the data config")
        self.cfg, self.objective, self.rank, self.world_size = cfg, objective, rank, world_size
        self.split = split
        self.cache = ShardCache.from_config(cfg)
        if any(is_remote(s) for s in specs):
            self.cache.check_writable()
        # a missing local shard fails here; remote sources fetch only their index.json
        self.sources: list[ShardIndex] = [resolve_source(s, timeout=cfg.fetch_timeout_s, retries=cfg.fetch_retries,
                                                         cache_dir=self.cache.root) for s in specs]
        if rank == 0:  # what `ptft shard --index-only` found damaged is said again where it costs data
            listed = (src.shards for src in self.sources if isinstance(src.shards, list))  # not column indexes
            for shard in (sh for shards in listed for sh in shards if sh.damaged):
                log.warning("shard %s was damaged when indexed (%s): the rest of it is not read",
                            redact(shard.path), shard.damaged)
        self.builder = self._builder()
        self.planned = cfg.kind == "text" and cfg.packing == "plan"
        self.stats: dict[str, int] = {}
        # The batch just handed out must not be trained: (kind, one line), kind "unreachable" or
        # "corrupt" (stream.py). With defer_problems (the trainer: it stops every rank together,
        # saving the last complete step) such batches are handed out flagged; else a strict
        # loader raises SourceUnreachable / CorruptSampleError, a lenient one goes on (skipped, counted).
        self.problem: tuple[str, str] | None = None
        self.defer_problems = False
        self._plans: OrderedDict[int, object] = OrderedDict()
        self._rows: dict[int, int] = {}  # rows of each epoch's own plan
        if self.planned:
            self._use_pretokenised()
            self._lengths = self._token_lengths()
        self.docs = cfg.batch_size if self.planned else self._docs_per_batch()
        self.epoch, self.position = epoch, 0
        self.carry = self._chain_carry(epoch)
        if len(self) == 0:
            unit = f"{self._plan().n_rows} packed rows" if self.planned else f"{self.epoch_length()} samples"
            raise DataError(f"{unit} cannot fill one step of {world_size} ranks x {self.docs} per batch")

    # --- packing plan (text, packing: plan)
    def _use_pretokenised(self) -> None:
        """Read .ids members instead of tokenising where a source was pre-tokenised with
        this very tokenizer.json; with another one its text is tokenised (and we say so)."""
        from ptft_engine.data.tokenizer import tokenizer_file

        ours = None
        for src in self.sources:
            theirs = src.extra.get("tokenizer_sha256")
            if not theirs:
                continue
            ours = ours or sha256_file(tokenizer_file(self.cfg.tokenizer))
            if theirs != ours:
                log.warning("shards %s were pre-tokenised with another tokenizer.json; tokenising their text "
                            "with %s instead", redact(src.shards[0].path) if len(src.shards) else "?",
                            self.cfg.tokenizer)
                continue
            # keyed as the stream names shards in its records (URLs without credentials)
            self.builder.id_shards.update({redact(s.path): s.ids_dtype for s in src.shards
                                           if s.lengths_path and s.ids_dtype})

    def _token_lengths(self) -> dict[str, np.ndarray]:
        """Token count of every sample, per shard path: from the index, or one tokenising pass."""
        from ptft_engine.data.lengths import shard_lengths

        bad = BadSamples(self.cfg.strict)  # strict: a bad sample fails here, at start
        out = {s.path: shard_lengths(s, self.builder, bad, self.cache) for src in self.sources for s in src.shards}
        if bad.count:
            self.stats["skipped"] = bad.count
        return out

    def _plan(self, epoch: int | None = None):
        """The packing plan of an epoch (the current one by default); eval always uses epoch 0's."""
        from ptft_engine.data.plan import PackingPlan

        epoch = (self.epoch if epoch is None else epoch) if self.split == "train" else 0
        if epoch not in self._plans:
            order = self._order(epoch)
            flat = np.concatenate([self._lengths[s.path] for s in order.shards])
            base = np.concatenate([[0], np.cumsum(shard_counts(order.shards))])
            shard_ids, idxs = order.slice(0, len(order))
            self._plans[epoch] = PackingPlan(flat[base[shard_ids] + idxs], self.cfg.seq_len, self.needs.text_layout,
                                             add_bos=self.cfg.add_bos)
            self._rows[epoch] = self._plans[epoch].n_rows
            if len(self._plans) > 2:  # this epoch's and the one whose tail it carries: plans can be large
                self._plans.popitem(last=False)
        self._plans.move_to_end(epoch)
        return self._plans[epoch]

    def _n_rows(self, epoch: int) -> int:
        return self._rows[epoch] if epoch in self._rows else self._plan(epoch).n_rows

    def _chain_carry(self, epoch: int) -> int | None:
        """The row of the previous epoch's plan from which its tail (the rows after its last
        whole step) opens `epoch`, as a run on this world size from epoch 0 carries it; a
        resumed run takes it from the checkpoint instead. None: nothing carried (eval:
        never; its tail is dropped and counted)."""
        if not self.planned or self.split != "train":
            return None
        step, carried, carry = self.world_size * self.docs, 0, None
        for e in range(epoch):
            n = self._n_rows(e)
            carry = max(0, n - (carried + n) % step)
            carried = n - carry
            carry = carry if carried else None
        return carry

    def _carried_rows(self) -> int:
        return 0 if self.carry is None else self._n_rows(self.epoch - 1) - self.carry

    def epoch_units(self) -> int:
        """What a position counts to in this epoch: packed rows (the carried tail of the
        previous epoch, then this epoch's plan), or samples."""
        if not self.planned:
            return self.epoch_length()
        return self._carried_rows() + self._n_rows(self.epoch if self.split == "train" else 0)

    def _docs_per_batch(self) -> int:
        cfg = self.cfg
        if cfg.kind != "text":
            return cfg.batch_size
        if cfg.docs_per_batch != "auto":
            return cfg.docs_per_batch
        # The first documents of the shards (the same on every rank) give the mean length;
        # a pure function of the data, so a resumed run computes the same number.
        order = EpochOrder(self.sources, seed=0, epoch=0, shuffle=False)
        n = min(AUTO_SAMPLE_DOCS, len(order))
        reader = ShardStream(order, self.builder, rank=0, world_size=1, docs=n, start=0, strict=False,
                             cache=self.cache)
        texts, _ = self.builder.texts(reader.read(0, BadSamples(strict=False)), BadSamples(strict=False))
        self._add_stats(reader.counters())
        reader.close()
        extra = self.needs.specials_per_doc
        per_doc = sum(len(ids) + extra for ids in self.builder.tok.encode_batch(texts)) / max(1, len(texts))
        return max(1, int(cfg.batch_size * cfg.seq_len / max(per_doc, 1.0)))

    def _prefetch_shards(self) -> int:
        if self.cfg.prefetch_shards != "auto":
            return self.cfg.prefetch_shards
        counts = np.concatenate([shard_counts(src.shards) for src in self.sources])
        per_shard = max(1.0, float(counts.mean()) if len(counts) else 1.0)
        span = self.cfg.shuffle_buffer if self.cfg.shuffle else self.world_size * self.docs
        return min(MAX_AUTO_PREFETCH, math.ceil(span / per_shard) + 2)

    def _builder(self):
        from ptft_engine.data.tokenizer import load_tokenizer

        cfg = self.cfg
        tok = None
        if self.needs.tokenizer:
            if not cfg.tokenizer:
                raise DataError(f"objective {self.objective!r} needs `tokenizer` (a tokenizer.json) in the data config")
            tok = load_tokenizer(cfg.tokenizer)
        return BUILDERS[self.needs.kind](cfg, self.needs, tok, self.sources)

    def _order(self, epoch: int) -> EpochOrder:
        cfg = self.cfg
        train = self.split == "train"
        return EpochOrder(self.sources, seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle and train,
                          block=cfg.shuffle_buffer, resample=cfg.resample and train,
                          weights=cfg.weights if train else None,
                          length=cfg.samples_per_epoch if train else None)

    def epoch_length(self) -> int:
        if self.split == "train" and self.cfg.samples_per_epoch:
            return self.cfg.samples_per_epoch
        return sum(src.total for src in self.sources)

    def __len__(self) -> int:
        """Batches per rank in a whole epoch (packed text: of the current epoch's plan)."""
        return steps_left(self.epoch_units(), 0, self.world_size, self.docs)

    def mask_kwargs(self) -> dict:
        """Arguments of ptft_engine.data.apply_mlm_mask for batches of the current epoch
        (with `mask_in: step`)."""
        if not self.needs.mlm_mask:
            raise DataError(f"objective {self.objective!r} has no MLM mask")
        return self.builder.mask_kwargs(self.epoch if self.split == "train" else 0)

    def on_device(self, batch: dict) -> dict:
        """The last step of a batch, on the training step's device: with `mask_in: step` an
        MLM batch arrives unmasked (with mlm_sample_ids) and is masked here, through the
        same Philox op, so its masks equal those the workers would have drawn."""
        if "mlm_sample_ids" not in batch:
            return batch
        from ptft_engine.data.text import apply_mlm_mask

        return apply_mlm_mask(batch, backend=self.cfg.mask_backend, **self.mask_kwargs())

    def batches_left(self) -> int:
        """Batches per rank still to come in the current epoch (after a resume: fewer)."""
        return steps_left(self.epoch_units(), self.position, self.world_size, self.docs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0
        self.carry = self._chain_carry(epoch)

    def __iter__(self):
        cfg = self.cfg
        step_samples = self.world_size * self.docs
        # eval sees the same order and the same masks every time, so its losses compare
        order = self._order(self.epoch if self.split == "train" else 0)
        common = dict(rank=self.rank, world_size=self.world_size, start=self.position, strict=cfg.strict,
                      emit_sample_index=cfg.emit_sample_index, cache=self.cache,
                      prefetch_shards=self._prefetch_shards())
        if self.planned:
            from ptft_engine.data.planned import PlannedStream

            carry = None
            if self.carry is not None:
                carry = (self._order(self.epoch - 1), self._plan(self.epoch - 1), self.carry)
            stream = PlannedStream(order, self.builder, self._plan(), rows=self.docs, carry=carry, **common)
        else:
            stream = ShardStream(order, self.builder, docs=self.docs, **common)
        # A generator of its own: every iter(DataLoader) draws its workers' base seed from it, else
        # from torch's global RNG, which objectives draw their masks from in the step. A resume
        # restores that RNG and then opens an iterator: one draw there and the masks would differ
        # from the uninterrupted run's (our samples are pure of seed/epoch/position, not of it).
        kw = {"generator": torch.Generator().manual_seed(int(np.random.SeedSequence(
            [cfg.seed, self.epoch, self.rank]).generate_state(1)[0]))}
        if cfg.num_workers > 0:
            kw.update(num_workers=cfg.num_workers, prefetch_factor=cfg.prefetch_factor, worker_init_fn=_worker_init)
        for batch in DataLoader(stream, batch_size=None, **kw):
            self._add_stats(batch.pop("_stats"))
            self.problem = None
            if "_problem" in batch:
                self.problem = (batch.pop("_problem_kind"), batch.pop("_problem"))
                if not self.defer_problems and (cfg.strict or self.problem[0] == "corrupt"):
                    raise (CorruptSampleError if self.problem[0] == "corrupt" else SourceUnreachable)(self.problem[1])
            self.stats["batches"] = self.stats.get("batches", 0) + 1
            self.position += step_samples  # counted as consumed once handed out
            yield batch
        next_carry = None
        if self.planned:
            # the rows after the last whole step: training carries them into the next
            # epoch; eval (a fixed set) drops them, counted once, by rank 0
            own_first = self.position - self._carried_rows()
            if self.split == "train":
                next_carry = own_first if own_first < self._n_rows(self.epoch) else None
            elif self.rank == 0:
                tail = int(self._plan().row_fill[own_first:].sum())
                self.stats["dropped_tokens"] = self.stats.get("dropped_tokens", 0) + tail
        self.epoch, self.position, self.carry = self.epoch + 1, 0, next_carry

    def _add_stats(self, stats: dict) -> None:
        for key, value in stats.items():
            self.stats[key] = self.stats.get(key, 0) + int(value)

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "position": self.position, "seed": self.cfg.seed,
                "epoch_length": self.epoch_length(), "world_size": self.world_size, "docs_per_batch": self.docs,
                "split": self.split, "unit": "rows" if self.planned else "samples", "carry": self.carry}

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("version") != STATE_VERSION:
            raise DataError(f"data state version {sd.get('version')!r} is not {STATE_VERSION}")
        if sd["seed"] != self.cfg.seed:
            raise DataError(f"data state was saved with seed {sd['seed']}, but the config has seed {self.cfg.seed}")
        if sd["epoch_length"] != self.epoch_length():
            raise DataError(f"data state was saved for an epoch of {sd['epoch_length']} samples, but these shards "
                            f"give {self.epoch_length()}: the shards changed")
        unit = "rows" if self.planned else "samples"
        if sd.get("unit", "samples") != unit:
            raise DataError(f"data state counts {sd.get('unit', 'samples')}, but this config counts {unit} "
                            f"(packing: {self.cfg.packing}): resume with the packing the run started with")
        self.epoch = int(sd["epoch"])
        self.carry = sd.get("carry") if self.planned else None
        if not 0 <= sd["position"] <= self.epoch_units():
            raise DataError(f"data state position {sd['position']} is outside the epoch")
        self.position = int(sd["position"])


def _text_builder(cfg: DataConfig, needs: DataNeeds, tok, sources: list[ShardIndex]):
    from ptft_engine.data.text import TextBuilder

    return TextBuilder(cfg, needs, tok)


def _image_builder(cfg: DataConfig, needs: DataNeeds, tok, sources: list[ShardIndex]):
    from ptft_engine.data.images import ImageBuilder

    return ImageBuilder(cfg, needs, tok)


def _audio_builder(cfg: DataConfig, needs: DataNeeds, tok, sources: list[ShardIndex]):
    from ptft_engine.data.audio import AudioBuilder

    return AudioBuilder(cfg, sources, needs)


# data kind -> its batch builder(cfg, needs, tokenizer or None, sources)
BUILDERS = {"text": _text_builder, "image": _image_builder, "image_text": _image_builder, "audio": _audio_builder}


def needs_of(objective: str) -> DataNeeds:
    """What the objective named `objective` needs from the stream, as its spec declares."""
    from ptft_engine.objectives import get_spec, names  # the one way up: specs name their data needs

    if objective not in names():
        raise DataError(f"unknown objective {objective!r}; choose one of {', '.join(names())}")
    return get_spec(objective).data


def build_loader(cfg: DataConfig, *, objective: str, rank: int = 0, world_size: int = 1, epoch: int = 0,
                 split: str = "train") -> Loader:
    return Loader(cfg, objective=objective, rank=rank, world_size=world_size, epoch=epoch, split=split)
