"""The pre-training loop on DeepSpeed: one `Trainer` per process (rank).

    trainer = Trainer(cfg)           # process group, objective, DeepSpeed, data, resume
    result = trainer.fit()           # train → periodic eval/checkpoints → final checkpoint

The step itself (`_train_step`) reads top to bottom: micro-batches through forward,
backward and DeepSpeed's step (which applies the update at the accumulation boundary),
then one all-reduce that carries the loss, the token count and any stop request.
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
            loader = setup.make_loader(self.cfg, rank=self.rank, world_size=self.world_size, epoch=0, split="eval")
        except ValueError as exc:
            raise checks.StartCheckError(f"eval set (data.eval_shards): {exc}; add eval data, lower "
                                         "data.batch_size, or set run.eval_every=0") from None
        self._fail(checks.eval_fits(self.cfg, loader))

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

    def _next_batch(self) -> dict[str, Any]:
        if self.data_iter is None:
            self.data_iter = iter(self.loader)
        try:
            batch = next(self.data_iter)
        except StopIteration:  # epoch over: every rank ends together (equal batch counts)
            self.state.epoch += 1
            self.faults.collect(self.loader)  # its last counts, before it is replaced
            ended = self.loader.state_dict()
            self.loader = self._make_loader(self.state.epoch)
            if ended.get("carry") is not None:  # packed text: the ended epoch's tail opens this one
                self.loader.load_state_dict(ended)
            self.data_iter = iter(self.loader)
            batch = next(self.data_iter)
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

    def _train_step(self) -> dict[str, float]:
        self.engine.train()
        lr = self._set_lr()
        gas = self.cfg.train.grad_accum_steps
        self.optimizer.last_step_bad = False  # DeepSpeed may skip a step without calling our optimizer
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        units = 0.0
        extras: dict[str, torch.Tensor] = {}
        for _ in range(gas):
            batch = self._next_batch()
            out = self.engine(batch)
            self.engine.backward(out["loss"])
            self.engine.step()  # DeepSpeed reduces, clips and updates only at the last micro-batch
            loss_sum += out["loss"].detach().double()  # stays on the device: one sync per step
            units += float(out[f"num_{self.unit}"])  # the count the spec's unit names
            for key, value in objective_scalars(out).items():
                extras[key] = extras.get(key, 0) + value.to(self.device, torch.float64)
        bad = self.optimizer.last_step_bad or not self.engine.was_step_applied()
        # one collective per step: mean loss over ranks, units processed, stop request from any
        # rank, and the objective's own scalars (accuracy, masked loss, ...), same keys on every rank
        names = sorted(extras)
        stats = torch.stack([loss_sum / gas, loss_sum.new_tensor(units),
                             loss_sum.new_tensor(float(self.stop.requested)), *(extras[k] / gas for k in names)])
        if self.world_size > 1:
            dist.all_reduce(stats)
        stats = stats.cpu()
        norm = self.engine.get_global_grad_norm()
        return {"loss": stats[0].item() / self.world_size, "units": stats[1].item(), "stop": stats[2].item() > 0,
                "lr": lr, "bad": bad, "extras": {k: stats[3 + i].item() / self.world_size for i, k in enumerate(names)},
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
        loader = setup.make_loader(self.cfg, rank=self.rank, world_size=self.world_size, epoch=0, split="eval")
        if loader is None:
            return None
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
