"""The pre-training loop on DeepSpeed: one `Trainer` per process (rank).

    trainer = Trainer(cfg)           # process group, objective, DeepSpeed, data, resume
    result = trainer.fit()           # train → periodic eval/checkpoints → final checkpoint

The step itself (`_train_step`) reads top to bottom: micro-batches through forward and
backward, then one all-reduce that carries the loss, the token count, any stop request and
whether a rank's data must not be trained (its source unreachable, or strict mode met a bad
sample), then DeepSpeed's step (which applies the update at the accumulation boundary) unless
that data flag is up or the global batch holds no real data: then every rank stops without
the update, saving the last complete step (`_stop_on_data`).

The data indexes are read once, when the loaders are made at start: the train loader moves
itself from epoch to epoch and the eval loader is kept, so an outage of a remote source
after start never meets an index fetch.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from ptft_engine.config.schema import RunConfig
from ptft_engine.data.errors import DataError
from ptft_engine.engine import checkpoint, checks, elastic, rundir, runtime, setup
from ptft_engine.engine.async_save import AsyncSaver
from ptft_engine.engine.heartbeat import Heartbeat
from ptft_engine.engine.metrics import DataCounters, MetricsLogger, memory_stats, peak_tflops
from ptft_engine.engine.schedules import lr_at
from ptft_engine.engine.signals import StopRequest
from ptft_engine.engine.trainer_checkpoints import CheckpointHooks

log = logging.getLogger(__name__)
CLOSE_WAIT_S = 30.0  # how long close() waits for a background save an error left in flight


def objective_scalars(out: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What an objective reports beside its loss (accuracy, masked loss, perplexity, ...): its
    float scalars, logged as the step's mean over micro-batches and ranks. Counts (num_*) and
    the loss itself are handled apart."""
    return {k: v.detach() for k, v in out.items()
            if k != "loss" and not k.startswith("num_") and isinstance(v, torch.Tensor) and v.dim() == 0
            and v.is_floating_point()}


class TrainingStopped(RuntimeError):
    """The run stopped early for a reason the user must look at (e.g. repeated bad steps)."""


@dataclass
class TrainState:
    step: int = 0             # optimizer steps taken (applied or skipped)
    skipped: int = 0          # steps skipped for non-finite loss/gradients
    consecutive_bad: int = 0
    rollbacks: int = 0
    epoch: int = 0
    tokens_seen: int = 0


class Trainer(CheckpointHooks):
    def __init__(self, cfg: RunConfig, *, objective_factory: Callable[[], torch.nn.Module] | None = None,
                 run_dir: str | Path | None = None, overwrite: bool = False):
        self.cfg = cfg
        self.stopped_by: str | None = None  # the signal's name when fit() stopped on one
        self.stop = StopRequest().install()  # from the start: a signal during start-up is not lost
        self.lock: rundir.RunLock | None = None
        self.heartbeat: Heartbeat | None = None
        self.made_run_dir = False
        try:
            self._start(objective_factory, run_dir, overwrite)
        except BaseException:
            self.close()  # handlers, process group and lock back as they were
            if self.made_run_dir:  # a failed start leaves no trace: not even an empty run directory
                rundir.discard_if_unused(self.run_dir)
            raise

    def _start(self, objective_factory, run_dir, overwrite: bool) -> None:
        cfg = self.cfg
        self.device = runtime.pick_device(cfg.run.device)
        self.rank, self.world_size = setup.init_distributed(self.device, cfg.run.dist_timeout_s)
        self.run_dir = Path(run_dir or Path(cfg.run.output_dir) / cfg.run.name)
        self.ckpt_dir = Path(cfg.checkpoint.dir or self.run_dir / "checkpoints")
        # Start-time checks, before anything is written or DeepSpeed starts; all ranks agree
        resume = cfg.checkpoint.resume not in (None, "none")
        self._agree(lambda: self.rank == 0 and rundir.check_start(self.run_dir, self.ckpt_dir, resume=resume,
                                                                  overwrite=overwrite))
        resume_path = self._agree(lambda: self._resume_path(cfg.checkpoint.resume))
        self.loader = self._agree(lambda: self._make_loader(epoch=0))
        self.loader.defer_problems = True  # a batch not to train on is flagged, and _train_step stops on it
        self.eval_loader = None
        tok = getattr(getattr(self.loader, "builder", None), "tok", None)
        self._agree(lambda: self._fail(checks.model_fits_data(cfg, getattr(tok, "vocab_size", None))))
        if cfg.run.eval_every:  # an eval set too small would fail only at the first eval
            self._agree(self._check_eval)
        # The run directory is this run's: lock it (moving an old run aside with --overwrite)
        if self.rank == 0:
            self.made_run_dir = not self.run_dir.exists()
            self.lock, moved = self._agree(lambda: rundir.claim(self.run_dir, self.ckpt_dir, overwrite=overwrite))
            for path in moved:
                log.warning("--overwrite: the previous run was moved to %s", path)
        else:
            self._agree(lambda: None)
        runtime.seed_everything(cfg.run.seed)
        build = objective_factory or (lambda: setup.build_objective_from_config(cfg))
        self.engine, self.optimizer, self.ds_config = setup.init_deepspeed(cfg, build, self.world_size, self.device)
        self.objective = self.engine.module
        self.state = TrainState()
        self.faults = DataCounters()
        self.last_saved_step = -1
        self.saves_done, self.last_export_step = 0, -1
        self.resume_changes: list[str] = []
        self.saver = (AsyncSaver(self.engine, rank=self.rank, world_size=self.world_size,
                                 timeout_s=cfg.run.dist_timeout_s) if cfg.checkpoint.async_save else None)
        if self.rank == 0:
            # reloadable: `ptft pretrain --config <run_dir>/config.yaml` repeats the run
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            (self.run_dir / "deepspeed_config.json").write_text(json.dumps(self.ds_config, indent=1))
            checkpoint.remove_partial(self.ckpt_dir)
        self.data_iter = None  # created lazily so a resume can set the loader state first
        self._spare = None  # this rank's last batch: stands in for a flagged batch without tensors
        self._mark = None  # data position, epoch and RNG at the start of the step under way
        if resume_path is not None:
            self.load(resume_path)
        elif resume:
            log.info("resume=auto: no complete checkpoint in %s, starting fresh", self.ckpt_dir)
        if self.rank == 0 and resume:
            moved = rundir.trim_metrics(self.run_dir, self.state.step)  # each step once in metrics.jsonl
            if moved:
                log.info("metrics.jsonl: %d record(s) of steps after %d or of an earlier end-of-run summary "
                         "moved to %s", moved, self.state.step, rundir.SUPERSEDED)
        self.logger = MetricsLogger(self.run_dir, enabled=self.rank == 0, total_steps=cfg.run.max_steps,
                                    start_step=self.state.step, tensorboard=cfg.run.tensorboard,
                                    progress_bar=cfg.run.progress_bar)
        if resume_path is not None:
            changed = ", ".join(self.resume_changes)
            self.logger.message(f"resumed from {resume_path} at step {self.state.step}"
                                + (f" (elastic: {changed})" if changed else ""))
            if changed:
                self.logger.log(self.state.step, {"changes": self.resume_changes, "checkpoint": str(resume_path)},
                                split="resume")
        self.peak = peak_tflops(self.device, cfg.run.peak_tflops)
        self.unit = setup.throughput_unit(cfg)
        self.flops_per_unit = setup.flops_per_unit(self.objective, cfg)
        self.heartbeat = Heartbeat(self.rank, self.world_size)

    def _check_eval(self) -> None:
        try:
            self.eval_loader = setup.make_loader(self.cfg, rank=self.rank, world_size=self.world_size, epoch=0,
                                                 split="eval")
        except ValueError as exc:
            raise checks.StartCheckError(f"eval set (data.eval_shards): {exc}; add eval data, lower "
                                         "data.batch_size, or set run.eval_every=0") from None
        self._fail(checks.eval_fits(self.cfg, self.eval_loader))

    @staticmethod
    def _fail(message: str | None) -> None:
        if message is not None:
            raise checks.StartCheckError(message)

    def _agree(self, fn: Callable[[], Any]) -> Any:
        """Run a start step on every rank; if it fails on any, every rank raises its line
        (a rank must not wait in a collective for one that has already given up)."""
        result, error = None, None
        try:
            result = fn()
        except (ValueError, OSError) as exc:
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        checks.agree(error, self.rank, self.world_size)
        return result

    def _resume_path(self, resume: str | None) -> Path | None:
        if not resume or resume == "none":
            return None
        path = checkpoint.find_latest(self.ckpt_dir) if resume == "auto" else Path(resume)
        if path is None:
            return None
        elastic.check_compatible(self.cfg, checkpoint.read_meta(path), path)  # before anything is written
        return path

    # ---------------------------------------------------------------- data
    def _make_loader(self, epoch: int):
        return setup.make_loader(self.cfg, rank=self.rank, world_size=self.world_size, epoch=epoch)

    def _next_batch(self) -> dict[str, Any] | None:
        """The next batch on the device; None for a flagged one without tensors (self.loader.problem)."""
        if self.data_iter is None:
            self.data_iter = iter(self.loader)
        try:
            batch = next(self.data_iter)
        except StopIteration:  # epoch over: every rank ends together (equal batch counts)
            # the loader has moved itself to the next epoch (packed text: with the ended one's
            # tail); the same loader goes on, so the shard index is not fetched again
            self.state.epoch = self.loader.epoch
            self.data_iter = iter(self.loader)
            batch = next(self.data_iter)
        if not any(isinstance(v, torch.Tensor) for v in batch.values()):
            return None
        return self.loader.on_device(self._to_device(batch))

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.train.precision)
        return runtime.move_batch(batch, self.device, dtype)

    # ---------------------------------------------------------------- the step
    def _set_lr(self) -> float:
        t = self.cfg.train
        lr = lr_at(self.state.step, base_lr=t.lr, total_steps=self.cfg.run.max_steps, warmup_steps=t.warmup_steps,
                   schedule=t.schedule, min_lr_ratio=t.min_lr_ratio)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _train_step(self) -> dict[str, Any]:
        self.engine.train()
        # where a stop before this step's update puts the data position and RNG back to (_stop_on_data)
        self._mark = (self.state.epoch, self.loader.epoch, self.loader.position, self.loader.carry,
                      checkpoint.rng_state())
        lr = self._set_lr()
        gas = self.cfg.train.grad_accum_steps
        self.optimizer.last_step_bad = False  # DeepSpeed may skip a step without calling our optimizer
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        units, problem, batch = 0.0, None, None
        extras: dict[str, torch.Tensor] = {}
        for i in range(gas):
            if problem is None:  # after a flagged batch no more data is taken: the step will not count
                batch = self._next_batch()
                problem = self.loader.problem
                self._spare = batch if batch is not None else self._spare
            # the step's collectives run on every rank, a flagged one too (on a stand-in batch)
            run_batch = batch if batch is not None else self._spare
            if run_batch is None and self.world_size > 1:  # nothing to stand in yet (the first step)
                raise DataError(problem[1])
            if run_batch is not None:
                out = self.engine(run_batch)
                self.engine.backward(out["loss"])
                loss_sum += out["loss"].detach().double()  # stays on the device: one sync per step
                units += float(out[f"num_{self.unit}"]) if problem is None else 0.0  # the spec's unit
                for key, value in objective_scalars(out).items():
                    extras[key] = extras.get(key, 0) + value.to(self.device, torch.float64)
            if i < gas - 1:
                self.engine.step()  # not the boundary: DeepSpeed only counts the micro-batch
        # one collective per step: mean loss over ranks, units processed, stop request and data flag
        # from any rank, and the objective's own scalars (accuracy, masked loss, ...), same keys on every rank
        names = sorted(extras)
        flags = [units, float(self.stop.requested), float(problem is not None)]
        stats = torch.cat([(loss_sum / gas).view(1), loss_sum.new_tensor(flags),
                           *((extras[k] / gas).view(1) for k in names)])
        if self.world_size > 1:
            dist.all_reduce(stats)
        stats = stats.cpu()
        halt = stats[3].item() > 0 or stats[1].item() == 0  # a rank's data flagged, or no real data at all
        out = {"loss": stats[0].item() / self.world_size, "units": stats[1].item(), "stop": stats[2].item() > 0,
               "lr": lr, "halt": halt, "problem": problem,
               "extras": {k: stats[4 + i].item() / self.world_size for i, k in enumerate(names)}}
        if halt:  # no update: the run stops at the last complete step
            return out
        self.engine.step()  # DeepSpeed reduces, clips and updates at the accumulation boundary
        norm = self.engine.get_global_grad_norm()
        return {**out, "bad": self.optimizer.last_step_bad or not self.engine.was_step_applied(),
                "grad_norm": float(norm) if norm is not None else self.optimizer.last_grad_norm}

    # ---------------------------------------------------------------- loop
    def fit(self) -> TrainState:
        """Train to run.max_steps, or until a signal (then `self.stopped_by` names it)."""
        self.stop.install()
        try:
            return self._guarded(self._loop)  # every collective of the loop: steps, logging, eval, saves
        finally:
            self.stop.restore()
            self.logger.close()

    def _loop(self) -> TrainState:
        cfg = self.cfg
        t_last, units_last = time.perf_counter(), 0.0
        while self.state.step < cfg.run.max_steps:
            out = self._train_step()
            if out["halt"]:
                self._stop_on_data(out["problem"])
            self.state.step += 1
            self.heartbeat.step_done(self.state.step)
            self.state.tokens_seen += int(out["units"])
            units_last += out["units"]
            self.logger.advance()
            self._count_bad_step(out["bad"])
            if self.state.step % cfg.run.log_every == 0 or self.state.step == cfg.run.max_steps or out["stop"]:
                now = time.perf_counter()
                self._log_train(out, units_last / max(now - t_last, 1e-9))
                t_last, units_last = now, 0.0
            if self.state.consecutive_bad >= cfg.bad_steps.max_consecutive:
                self._too_many_bad_steps()
            if cfg.run.eval_every and self.state.step % cfg.run.eval_every == 0:
                self.evaluate()
            if out["stop"]:
                self.save()
                self.settle_saves()  # the checkpoint is complete before we exit
                self.stopped_by = self.stop.name or "on another rank"  # the flag came in the all-reduce
                self._summary(f"stopped by a signal ({self.stopped_by}) at step {self.state.step}; checkpoint "
                              f"saved in {self.ckpt_dir}, continue with --resume auto")
                return self.state
            if cfg.checkpoint.every and self.state.step % cfg.checkpoint.every == 0:
                self.save()
        if cfg.checkpoint.save_at_end:
            self.save(final=True)
        self.settle_saves()
        self._summary(f"finished at step {self.state.step}")
        return self.state

    def _guarded(self, fn: Callable[[], Any]) -> Any:
        """A collective that fails (timed out, or a peer gone) becomes one line naming the rank
        that did not answer, instead of a wait past run.dist_timeout_s or a gloo traceback."""
        try:
            return fn()
        except TrainingStopped:
            raise  # already one line (bad steps), and its text may name a timeout itself
        except RuntimeError as exc:
            text = str(exc)
            if self.world_size < 2 or not any(w in text.lower() for w in ("timed out", "timeout", "connection",
                                                                           "peer", "broken pipe")):
                raise
            who = self.heartbeat.silent_ranks() if self.heartbeat is not None else None
            latest = checkpoint.find_latest(self.ckpt_dir)
            first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            first = first.split("] ", 1)[-1]  # drop gloo's source location
            raise TrainingStopped(
                f"rank {self.rank}: a collective failed after step {self.state.step} "
                f"(run.dist_timeout_s={self.cfg.run.dist_timeout_s:g}): {first}; "
                f"{'not answering: ' + who if who else 'a peer rank failed or stopped answering'}; "
                f"newest checkpoint: {latest or 'none'}") from None

    def _stop_on_data(self, problem: tuple[str, str] | None) -> None:
        """Every rank, together: the step under way is not trained (no update, no LR advance);
        the data position goes back to its start, so a resume trains its batches, and the last
        complete step is saved. Raises TrainingStopped with one line naming the cause."""
        self.state.epoch, self.loader.epoch, self.loader.position, self.loader.carry, rng = self._mark
        checkpoint.set_rng_state(rng)  # the dropped forward drew from it: a resume repeats the step as it was
        self.data_iter = None
        reports = [problem]
        if self.world_size > 1:  # only on this path: which rank saw what
            reports = [None] * self.world_size
            dist.all_gather_object(reports, problem)
        self.save()
        self.settle_saves()
        step = self.state.step
        saved = f"no update was made; checkpoint of step {step} in {self.ckpt_dir}"
        seen = [(r, p) for r, p in enumerate(reports) if p]
        if not seen:
            raise TrainingStopped(f"stopped before step {step + 1}: its global batch holds no real {self.unit} "
                                  f"(every sample skipped: see the data warnings above); {saved}")
        rank, (kind, line) = seen[0]
        who = f"rank {rank}" + (f" and {len(seen) - 1} other rank(s)" if len(seen) > 1 else "")
        if kind == "unreachable":
            raise TrainingStopped(f"stopped before step {step + 1}: {line} ({who}); {saved}; continue with "
                                  "--resume auto once it is back (the batches not trained come first)")
        raise TrainingStopped(f"stopped before step {step + 1}: {line} ({who}); {saved}; replace or remove that "
                              "shard (or set data.strict=false to skip bad samples), then --resume auto")

    def _summary(self, how: str) -> None:
        """End of run (every rank): data counters of the whole lineage into metrics.jsonl and one line."""
        self.faults.collect(self.loader)
        self.faults.take(self.world_size)
        totals = {f"data_{k}": v for k, v in sorted(self.faults.totals.items())}
        self.logger.log(self.state.step, {"skipped_steps": self.state.skipped, "tokens_seen": self.state.tokens_seen,
                                          **totals, "how": how}, split="summary")
        data = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.totals.items())) or "no counters"
        self.logger.message(f"{how}. data: {data}; skipped steps {self.state.skipped}")

    def _count_bad_step(self, bad: bool) -> None:
        if not bad:
            self.state.consecutive_bad = 0
            return
        self.state.skipped += 1
        self.state.consecutive_bad += 1
        self.logger.message(f"step {self.state.step}: non-finite loss or gradient, update skipped "
                            f"({self.state.consecutive_bad} in a row, {self.state.skipped} in total)")

    def _too_many_bad_steps(self) -> None:
        limit = self.cfg.bad_steps
        self.settle_saves()  # a save in flight becomes the rollback target
        latest = checkpoint.find_latest(self.ckpt_dir)
        if limit.action == "rollback" and latest is not None and self.state.rollbacks < limit.max_rollbacks:
            self.state.rollbacks += 1
            self.logger.message(f"{limit.max_consecutive} bad steps in a row: rolling back to {latest.name} "
                                "and skipping the offending batches")
            self.load(latest, keep_data_position=True)
            return
        self.save()
        raise TrainingStopped(f"stopped at step {self.state.step}: {limit.max_consecutive} steps in a row had a "
                              f"non-finite loss or gradient; checkpoint saved in {self.ckpt_dir} "
                              "(lower train.lr, check the data, or set bad_steps.action=rollback)")

    def _log_train(self, out: dict[str, Any], units_per_s: float) -> None:
        self.faults.collect(self.loader)
        data = {f"data_{k}": v for k, v in self.faults.take(self.world_size).items()}  # all ranks, this interval
        metrics = {"loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
                   "skipped_steps": self.state.skipped, "epoch": self.state.epoch,
                   f"{self.unit}_per_s": units_per_s, **out["extras"],
                   **memory_stats(self.device), **data}
        if self.peak and self.flops_per_unit:
            metrics["mfu"] = self.flops_per_unit * units_per_s / (self.peak * 1e12 * self.world_size)
        self.logger.log(self.state.step, metrics)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if self.eval_loader is None:  # made once (at start when run.eval_every is set): its index is kept
            self.eval_loader = setup.make_loader(self.cfg, rank=self.rank, world_size=self.world_size, epoch=0,
                                                 split="eval")
        loader = self.eval_loader
        if loader is None:
            return None
        loader.set_epoch(0)  # from its start again (the last eval stopped after eval_steps)
        self.engine.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for i, batch in enumerate(loader):
            if i >= self.cfg.run.eval_steps:
                break
            total[0] += self.engine(loader.on_device(self._to_device(batch)))["loss"].double()
            total[1] += 1
        if self.world_size > 1:
            dist.all_reduce(total)
        total = total.cpu()
        loss = (total[0] / total[1].clamp(min=1)).item()
        self.logger.log(self.state.step, {"loss": loss}, split="eval")
        self.engine.train()
        return loss

    def close(self) -> None:
        """Tear the process group down so no rank lingers after the others exit (through
        DeepSpeed, which then forgets its cached subgroups: a later Trainer can start anew);
        then give the run directory free."""
        if getattr(self, "saver", None) is not None:
            # fit() has settled its saves; a save still in flight here means an error stopped the
            # run: give it a bounded time (rank 0 would wait for dead peers), the last one stays
            try:
                if not self.saver.wait(timeout=CLOSE_WAIT_S):
                    log.warning("a background checkpoint write is still running: abandoned (%s keeps the "
                                "last complete checkpoint)", self.ckpt_dir)
            except RuntimeError as exc:
                log.error("%s", exc)
        if getattr(self, "heartbeat", None) is not None:
            self.heartbeat.close()
        self.stop.restore()
        setup.teardown_distributed()
        if self.lock is not None:
            self.lock.release()
            self.lock = None
