"""The trainer's checkpoint hooks: save (sync or async), wait for saves, HF exports, load
(same layout through DeepSpeed, another layout through engine/elastic.py).

A mixin of `Trainer` (engine/trainer.py), split out to keep that file one screen of loop.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ptft_engine.engine import checkpoint, elastic
from ptft_engine.engine.metrics import DataCounters

log = logging.getLogger(__name__)


class CheckpointHooks:
    def _rank_state(self) -> dict[str, Any]:
        s = self.state
        return {"trainer": {"step": s.step, "skipped": s.skipped, "consecutive_bad": s.consecutive_bad,
                            "rollbacks": s.rollbacks, "epoch": s.epoch, "tokens_seen": s.tokens_seen},
                "data": self.loader.state_dict(), "data_totals": dict(self.faults.totals)}

    def save(self, *, final: bool = False) -> Path | None:
        """Collective. With checkpoint.async_save it returns once the state is in host memory;
        the files are written in the background (`settle_saves` waits for them)."""
        every = self.cfg.checkpoint.export_hf_every
        if self.state.step == self.last_saved_step:
            if final and every and self.last_export_step != self.state.step:  # the end is exported too
                self.settle_saves()
                if self.rank == 0:
                    self._export_hf(checkpoint.find_latest(self.ckpt_dir))
                self.last_export_step = self.state.step
            return None
        self.saves_done += 1
        export = bool(every) and (final or self.saves_done % every == 0)
        self.last_export_step = self.state.step if export else self.last_export_step
        after = self._export_hf if export and self.rank == 0 else None
        meta = elastic.checkpoint_meta(self.cfg, self.world_size, self.state.epoch)
        t0 = time.perf_counter()
        if self.saver is not None:
            path = self.saver.save(self.engine, self.ckpt_dir, self.state.step, rank_state=self._rank_state(),
                                   meta=meta, keep_last=self.cfg.checkpoint.keep_last, after=after)
        else:
            path = checkpoint.save(self.engine, self.ckpt_dir, self.state.step, rank=self.rank,
                                   rank_state=self._rank_state(), keep_last=self.cfg.checkpoint.keep_last, meta=meta)
            if after is not None:
                after(path)
        self.last_save_stall_s = time.perf_counter() - t0
        log.info("step %d: checkpoint %s, the step waited %.3f s", self.state.step,
                 "snapshot taken (written in the background)" if self.saver else "written", self.last_save_stall_s)
        self.last_saved_step = self.state.step
        return path

    def settle_saves(self) -> None:
        """Collective: every rank's background save is written and rank 0 has declared it complete."""
        if self.saver is not None:
            self.saver.wait()
            checkpoint.barrier()

    def _export_hf(self, path: Path | None) -> None:
        """Rank 0: the `ptft export --format hf` of a complete checkpoint, beside the run."""
        if path is None or self.cfg.model is None:
            return
        from ptft_engine.export.zero import export_checkpoint
        out = self.run_dir / "exports" / f"{path.name}-hf"
        export_checkpoint(path, out, fmt="hf")
        log.info("exported %s to %s (checkpoint.export_hf_every)", path.name, out)

    def load(self, path: Path, *, keep_data_position: bool = False) -> None:
        meta = checkpoint.read_meta(path)
        self.resume_changes = elastic.layout_changes(meta, self.cfg, self.world_size)
        states = None
        if elastic.needs_conversion(meta, self.cfg, self.world_size):
            states = lambda p: elastic.load_states(self.engine, p, self.cfg, meta["step"], self.world_size)  # noqa: E731
        _, rank_state = checkpoint.load(self.engine, path, rank=self.rank, states=states)
        rank_state["data"] = elastic.data_state(rank_state["data"], meta, self.cfg, self.world_size)
        t = rank_state["trainer"]
        self.state.step, self.state.skipped, self.state.tokens_seen = t["step"], t["skipped"], t["tokens_seen"]
        self.state.consecutive_bad = 0
        if not keep_data_position:
            self.faults = DataCounters()
            self.faults.totals = dict(rank_state.get("data_totals", {}))
            self.state.epoch = t["epoch"]
            self.loader.load_state_dict(rank_state["data"])  # the loader of the start: its index is kept
            self.data_iter = None
        self.last_saved_step = self.state.step
