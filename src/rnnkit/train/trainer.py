"""The trainer: BPTT with clipping, checkpoints that resume bit for bit, early stopping, DDP.

It trains any object with the task interface declared in rnnkit.tasks.interface (build_model,
num_batches, batches, loss, evaluate, metric, state_dict, and the optional parts).

One optimizer step per batch. Non-finite losses or gradient norms skip the step (the weights
and optimizer are untouched) and are reported; max_bad_steps of them in a row stop the run
with TrainingError. No checkpoint is written while such a streak lasts, so the one on disk is
from before its first bad step, and the error says which step that is.

A resumed run ends as the uninterrupted run would have: weights, optimizer, best.pt and
results.json, and also its logs (metrics.csv, grad_norms.csv, TensorBoard events), since
the checkpoint holds the partial training-loss average and the last evaluated step, and the
logs are cut back to the checkpoint (RunFolder.rewind).
"""

from __future__ import annotations

import json
import math
import os
import time

import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed
from .config import RunConfig, TrainConfig, check
from .plots import learning_curves
from .runlog import RunFolder, read_rows

LOG_EVERY = 10  # steps between train-loss and gradient-norm rows in the run folder


class TrainingError(Exception):
    """Training cannot go on: it diverged, or the configuration does not fit the data."""


class TaskLoss(nn.Module):
    """The model and its task's loss as one module, so DDP sees one forward per backward
    (a truncated-BPTT window runs the model several times in one forward)."""

    def __init__(self, task, model: nn.Module):
        super().__init__()
        self.task, self.model = task, model

    def forward(self, batch, carry):
        return self.task.loss(self.model, batch, carry)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return kinds[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Schedule:
    """The learning-rate schedule and when it steps: after every optimizer step (cosine), every
    epoch (step) or every evaluation (plateau, on the validation metric). The one place that
    reads --schedule."""

    def __init__(self, optimizer, cfg: TrainConfig, total_steps: int, higher_is_better: bool):
        self.every, self.scheduler = None, None
        if cfg.schedule == "cosine":
            self.every = "step"
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
        elif cfg.schedule == "step":
            self.every = "epoch"
            self.scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.3)
        elif cfg.schedule == "plateau":
            self.every = "evaluation"
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max" if higher_is_better else "min", factor=0.3, patience=1)

    def after(self, event: str, metric: float | None = None) -> None:
        """Called after each "step", "epoch" and "evaluation"; steps the scheduler on its own event."""
        if event == self.every:
            self.scheduler.step(*(() if metric is None else (metric,)))

    def state_dict(self):
        return self.scheduler.state_dict() if self.scheduler else None

    def load_state_dict(self, state) -> None:
        if self.scheduler and state:
            self.scheduler.load_state_dict(state)


def parameter_grad_norms(model: nn.Module) -> dict[str, float]:
    return {name: float(p.grad.norm()) for name, p in model.named_parameters() if p.grad is not None}


def improved(value: float, best: float | None, higher_is_better: bool, loss: float | None = None,
             best_loss: float | None = None) -> bool:
    """Is value better than best? A non-finite value never is. A tie (an accuracy counts whole
    examples, so ties are common) is broken by the validation loss when both evaluations report one."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    if value == best:
        return loss is not None and best_loss is not None and loss < best_loss
    return value > best if higher_is_better else value < best


def show(metrics: dict[str, float]) -> str:
    """"name value" pairs; a value too large for 4 digits prints as inf, and NaN as nan, never capped."""
    return "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def quiet(*args, **kw) -> None:
    pass


class Trainer:
    """Trains `task` under `config`, writing the run folder `folder` (None: no files).

    With `unique`, `folder` is a default name: if it exists, the run takes folder-2, folder-3, ...
    (`self.folder` says which). With `resume`, the run continues from folder/checkpoint.pt; `run` is
    the folder already reopened (and locked) by the caller, else the trainer reopens it."""

    def __init__(self, task, config: RunConfig, folder: str | None, resume: bool = False, progress: bool = True,
                 print_fn=print, unique: bool = False, run: RunFolder | None = None):
        check(config)
        self.task, self.config, self.cfg = task, config, config.train
        self.folder, self.progress, self.resumed = folder, progress, resume
        self.device = torch.device(self.cfg.device)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.rank, self.world = distributed.init(self.cfg.device)
        # Other processes print nothing unless asked (RNNKIT_ALL_RANKS=1): their lines would repeat rank 0's.
        self.print = print_fn if self.rank == 0 or os.environ.get("RNNKIT_ALL_RANKS") else quiet
        self.run = run
        if resume and folder is not None and self.rank == 0 and run is None:
            self.run = RunFolder.reopen(folder)  # locked before the checkpoint is read or anything written
        try:
            self.setup(resume)
        except BaseException:
            if self.run is not None:
                self.run.close()
            raise
        if folder is not None and self.rank == 0 and not self.nothing_to_do:
            if resume:
                self.run.rewind(self.step)
            else:
                self.run = RunFolder.create(folder, unique=unique)
                self.folder = self.run.path
            self.run.write_json("config.json", config.to_dict())
            self.run.start_tensorboard()

    def setup(self, resume: bool) -> None:
        task, cfg = self.task, self.cfg
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        self.model = task.build_model().to(self.device)
        self.optimizer = make_optimizer(self.model.parameters(), cfg)
        self.total_steps = cfg.max_steps or cfg.epochs * task.num_batches()
        self.schedule = Schedule(self.optimizer, cfg, self.total_steps, task.higher_is_better)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        self.step, self.epoch, self.position = 0, 0, 0  # position: next batch index within the epoch
        self.best, self.evals_without_gain, self.carry, self.bad_steps = None, 0, None, 0
        self.best_loss = None  # the validation loss of the best evaluation, where the task reports one
        self.losses: list[float] = []  # this epoch's training losses since the last logged row (their mean is logged)
        self.evaluated_at = None  # the step of the last validation: a step is evaluated once
        self.saved_step = None  # the step of the checkpoint on disk
        self.first_bad_step = None
        self.started = time.perf_counter()
        self.nothing_to_do = False
        path = os.path.join(self.folder, "checkpoint.pt") if resume else None
        if resume and not os.path.exists(path) and not os.path.exists(os.path.join(self.folder, "results.json")):
            # killed before its first checkpoint: starting again from step 0 is exactly resuming it
            self.print(f"{self.folder} has no checkpoint yet; training it from step 0")
        elif resume:
            stored = self.load(path)
            self.nothing_to_do = self.finished_before(stored)
        loss_module = TaskLoss(task, self.model)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            loss_module = nn.parallel.DistributedDataParallel(loss_module, device_ids=ids)
        self.loss_module = loss_module

    def finished_before(self, stored: dict) -> bool:
        """A resumed run whose results.json exists has nothing left to do, unless --epochs or
        --max-steps were raised past where it stopped (and early stopping had not fired)."""
        if not os.path.exists(os.path.join(self.folder, "results.json")):
            return False
        extended = (self.cfg.epochs, self.cfg.max_steps) != (stored.get("epochs"), stored.get("max_steps"))
        return not extended or self.done() or self.patience_ran_out()

    # ------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "progress": {"step": self.step, "epoch": self.epoch, "position": self.position, "best": self.best,
                         "best_loss": self.best_loss, "evals_without_gain": self.evals_without_gain,
                         "losses": list(self.losses), "evaluated_at": self.evaluated_at},
            "carry": distributed.gather(self.carry, self.world),  # every process's rows, for any resume
            "task": self.task.state_dict(),
            "config": self.config.to_dict(),
        }

    def load(self, path: str) -> dict:
        """Restore the state in the checkpoint at path; returns the train section it was written with."""
        state = ckpt.load(path, task=self.config.task.task)
        ckpt.check_model_matches(self.model, state["model"], path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        p = state["progress"]
        self.step, self.epoch, self.position = p["step"], p["epoch"], p["position"]
        self.best, self.evals_without_gain = p["best"], p["evals_without_gain"]
        # absent from checkpoints written before ties were broken by loss, or before these were kept
        self.best_loss, self.losses, self.evaluated_at = p.get("best_loss"), list(p.get("losses", [])), p.get("evaluated_at")
        self.saved_step = self.step
        self.carry = to_device(distributed.shard(state["carry"], self.rank, self.world, dim=1), self.device)
        ckpt.set_rng_state(state["rng"])
        return (state.get("config") or {}).get("train", {})

    def save(self) -> None:
        """Write the checkpoint (rank 0); every process takes part, since the carried state is gathered.

        Not during a streak of skipped steps: the checkpoint on disk stays the one from before it."""
        if self.bad_steps:
            return
        if not ckpt.all_finite(self.model):  # never put non-finite weights over a good checkpoint
            raise TrainingError(f"weights became non-finite at step {self.step}; {self.kept()}; "
                                "lower --lr or --clip and train again")
        state = self.state()
        if self.run is not None:
            self.run.flush()  # the events up to this step are on disk before the checkpoint says they are
            ckpt.atomic_save(state, self.run.file("checkpoint.pt"))
        self.saved_step = self.step

    def kept(self) -> str:
        """Which checkpoint is on disk, for an error message."""
        if self.run is None:
            return "no checkpoint was written (no run folder)"
        if self.saved_step is None:
            return "no checkpoint was written before it"
        return f"the checkpoint on disk is from step {self.saved_step}"

    # ------------------------------------------------------------ one optimizer step

    def train_step(self, batch) -> float | None:
        """One update on a global batch. Returns the mean loss, or None if the step was skipped."""
        local = to_device(distributed.shard(batch, self.rank, self.world), self.device)
        self.model.train()
        with torch.autocast(self.device.type, dtype=amp_dtype(self.cfg.amp), enabled=self.cfg.amp != "off"):
            loss_sum, count, carry = self.loss_module(local, self.carry)
        total_loss = distributed.global_sum(float(loss_sum.detach()), self.world)
        total_count = distributed.global_sum(float(count), self.world)
        if not math.isfinite(total_loss):
            return self.skip(f"loss is {total_loss}")
        loss = loss_sum * (self.world / total_count)  # DDP averages over processes: this makes it the global mean
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_value > 0:
            nn.utils.clip_grad_value_(self.model.parameters(), self.cfg.clip_value)
        norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip if self.cfg.clip > 0 else math.inf))
        if not math.isfinite(norm) and not self.scaler.is_enabled():
            return self.skip(f"gradient norm is {norm}")
        try:
            self.scaler.step(self.optimizer)  # with fp16 loss scaling it skips inf steps itself
        except RuntimeError as e:
            if "overflow" not in str(e):
                raise
            raise TrainingError(f"the optimizer step {self.step + 1} overflowed ({e}): --lr {self.cfg.lr:g} is too "
                                f"large for {next(self.model.parameters()).dtype} weights; {self.kept()}; "
                                "lower --lr and train again") from None
        self.scaler.update()
        self.schedule.after("step")
        self.carry, self.bad_steps, self.first_bad_step = carry, 0, None
        return total_loss / total_count

    def skip(self, why: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.carry = None  # a state that produced a non-finite loss must not seed the next batch
        self.bad_steps += 1
        self.first_bad_step = self.first_bad_step or self.step + 1
        self.print(f"step {self.step + 1}: skipped, {why} ({self.bad_steps} in a row)")
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise TrainingError(f"{self.bad_steps} steps in a row had a non-finite loss or gradient "
                                f"(steps {self.first_bad_step} to {self.step + 1}); lower --lr or --clip; "
                                f"{self.kept()} (the first bad step was {self.first_bad_step})")
        return None

    # ------------------------------------------------------------ evaluation

    def evaluate(self, split: str) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=amp_dtype(self.cfg.amp),
                                             enabled=self.cfg.amp != "off"):
            return self.task.evaluate(self.model, split)

    def validate(self) -> bool:
        """Evaluate on the validation split, keep the best weights; True when patience has run out.

        A step is evaluated once: at an epoch's end that --eval-every has just evaluated, the
        weights are the same, and a second look must not count against patience."""
        if not self.task.has_valid:  # e.g. --valid-fraction 0: the last weights are tested
            return False
        if self.evaluated_at == self.step:
            return self.patience_ran_out()
        self.evaluated_at = self.step
        metrics = self.evaluate("valid")
        if self.run is not None:
            self.run.log(self.step, self.epoch, "valid", metrics)
        value = metrics[self.task.metric]
        self.print(f"step {self.step} epoch {self.epoch}: valid {show(metrics)}")
        self.schedule.after("evaluation", value)
        loss = metrics.get("loss")
        if improved(value, self.best, self.task.higher_is_better, loss, self.best_loss):
            self.best, self.best_loss, self.evals_without_gain = value, loss, 0
            if self.run is not None:
                ckpt.atomic_save({"model": self.model.state_dict(), "step": self.step, "metric": value,
                                  "task_name": self.config.task.task}, self.run.file("best.pt"))
        else:
            self.evals_without_gain += 1
        return self.patience_ran_out()

    def patience_ran_out(self) -> bool:
        return 0 < self.cfg.patience <= self.evals_without_gain

    # ------------------------------------------------------------ the loop

    def done(self) -> bool:
        return (self.epoch >= self.cfg.epochs or bool(self.cfg.max_steps and self.step >= self.cfg.max_steps)
                or self.out_of_time())

    def out_of_time(self) -> bool:
        return bool(self.cfg.max_minutes) and time.perf_counter() - self.started > 60 * self.cfg.max_minutes

    def fit(self) -> dict[str, float]:
        """Train until the epochs, max_steps or patience run out; return the test metrics of the best
        weights (in the process of rank 0; the others return {})."""
        try:
            if self.nothing_to_do:
                return self.already_finished()
            stop, self.started = False, time.perf_counter()
            while not self.done() and not stop:
                stop = self.run_epoch()
            results = self.finish()
        finally:
            if self.run is not None:
                self.run.close()
        self.loss_module = None  # DDP's reducer holds the process group: let it go while the peers are there
        distributed.finish(self.world)
        return results

    def already_finished(self) -> dict[str, float]:
        with open(os.path.join(self.folder, "results.json")) as f:
            results = json.load(f)
        self.print(f"{self.folder} finished at step {results.get('step')} (its results.json is written); "
                   "nothing to do. To train on, pass a larger --epochs or --max-steps with --resume")
        return results.get("test", {}) if self.rank == 0 else {}

    def run_epoch(self) -> bool:
        """Train from the current position to the end of the epoch; True when early stopping fired."""
        n = self.task.num_batches()
        bar = progress_bar(n, self.position, f"epoch {self.epoch + 1}/{self.cfg.epochs}", self.progress and self.rank == 0)
        started, timed = time.perf_counter(), 0
        for batch in self.task.batches(self.epoch, self.position):
            loss = self.train_step(batch)
            self.step += 1
            self.position += 1
            timed += 1
            if loss is not None:
                self.losses.append(loss)
            bar.update(1)
            if self.step % LOG_EVERY == 0 and self.losses:
                mean = sum(self.losses) / len(self.losses)
                bar.set_postfix(loss=f"{mean:.4g}", steps_per_s=f"{timed / (time.perf_counter() - started):.1f}")
                if self.run is not None:
                    self.run.log(self.step, self.epoch, "train", {"loss": mean})
                    self.run.log_grad_norms(self.step, parameter_grad_norms(self.model))
                self.losses, started, timed = [], time.perf_counter(), 0
            if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                if self.validate():
                    bar.close()
                    self.save()
                    return True
            if self.step % self.cfg.checkpoint_every == 0:
                self.save()
            if (self.cfg.max_steps and self.step >= self.cfg.max_steps) or self.out_of_time():
                break
        bar.close()
        if self.position >= n:  # the epoch is complete: the next starts at its first batch with a fresh state
            self.epoch, self.position, self.carry = self.epoch + 1, 0, None
            self.losses = []  # a logged training loss averages steps of one epoch
            self.schedule.after("epoch")
        stop = self.validate()
        self.save()
        return stop

    def finish(self) -> dict[str, float]:
        """Test the best weights (the last ones if no validation ran), write results.json and plots.
        Only the process of rank 0 tests: the others' weights are the same, their report would repeat it."""
        if self.rank != 0:
            return {}
        if self.run is not None and os.path.exists(self.run.file("best.pt")):
            self.model.load_state_dict(ckpt.load(self.run.file("best.pt"))["model"])
        results = self.evaluate("test")
        self.print("test  " + show(results))
        if self.run is not None:
            self.run.log(self.step, self.epoch, "test", results)
            self.run.write_json("results.json", {"step": self.step, "best_valid": self.best, "test": results})
            learning_curves(read_rows(self.run.metrics_path), self.run.file("plots"))
            for path in self.task.save_plots(self.model, self.run.path):
                self.print(f"wrote {path}")  # task-specific plots, such as a seq2seq run's attention heat maps
        return results


def amp_dtype(amp: str):
    return torch.float16 if amp == "fp16" else torch.bfloat16


def to_device(obj, device):
    """Tensors in (nested) tuples and lists moved to device; anything else (None, a Window) as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)) and not hasattr(obj, "_fields"):
        return type(obj)(to_device(o, device) for o in obj)
    return obj


class _NoBar:
    def update(self, n=1): pass
    def set_postfix(self, **kw): pass
    def close(self): pass


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar (an extra) showing loss, steps/s and time left; a no-op when disabled or missing."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=False)
