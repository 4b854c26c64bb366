"""The trainer: BPTT with clipping, checkpoints that resume bit for bit, early stopping, DDP.

It trains any task object with this shape (rnnkit.tasks has them):

    task.build_model() -> nn.Module
    task.num_batches() -> int                          training batches per epoch
    task.batches(epoch, start) -> iterator of global batches, tuples of tensors with the
                                  batch on dim 0, in an order fixed by (seed, epoch), from batch `start`
    task.loss(model, batch, carry) -> (loss_sum, count, carry)
                                  summed loss over `count` scored items; carry is the detached
                                  hidden state a stateful task passes to its next batch (else None)
    task.evaluate(model, split) -> {metric: value}    "valid" and "test"
    task.metric, task.higher_is_better               what early stopping watches
    task.state_dict() -> dict                          what eval/generate need besides weights

One optimizer step per batch. Non-finite losses or gradient norms skip the step (the weights
and optimizer are untouched) and are reported; max_bad_steps of them in a row stop the run
with TrainingError, and the checkpoint on disk stays the last good one.
"""

from __future__ import annotations

import math
import os
import time

import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed
from .config import RunConfig, TrainConfig
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


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int, higher_is_better: bool):
    if cfg.schedule == "cosine":  # stepped every optimizer step
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if cfg.schedule == "step":  # stepped every epoch
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.3)
    if cfg.schedule == "plateau":  # stepped every evaluation
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max" if higher_is_better else "min",
                                                          factor=0.3, patience=1)
    return None


def parameter_grad_norms(model: nn.Module) -> dict[str, float]:
    return {name: float(p.grad.norm()) for name, p in model.named_parameters() if p.grad is not None}


def improved(value: float, best: float | None, higher_is_better: bool, loss: float | None = None,
             best_loss: float | None = None) -> bool:
    """Is value better than best? A tie (an accuracy counts whole examples, so ties are common) is
    broken by the validation loss when both evaluations report one."""
    if best is None:
        return True
    if value == best:
        return loss is not None and best_loss is not None and loss < best_loss
    return value > best if higher_is_better else value < best


class Trainer:
    """Trains `task` under `config`, writing the run folder `folder` (None: no files)."""

    def __init__(self, task, config: RunConfig, folder: str | None, resume: bool = False, progress: bool = True,
                 print_fn=print):
        self.task, self.config, self.cfg = task, config, config.train
        self.folder_path, self.progress, self.print = folder, progress, print_fn
        self.device = torch.device(self.cfg.device)
        if self.cfg.amp != "off" and self.device.type != "cuda":
            raise TrainingError(f"--amp {self.cfg.amp} needs a CUDA device, got --device {self.cfg.device}")
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.rank, self.world = distributed.init(self.cfg.device)
        if self.cfg.batch_size % self.world:
            raise TrainingError(f"--batch-size {self.cfg.batch_size} must be divisible by the {self.world} processes")

        torch.manual_seed(self.cfg.seed)  # the same initial weights in every process
        self.model = task.build_model().to(self.device)
        self.optimizer = make_optimizer(self.model.parameters(), self.cfg)
        self.total_steps = self.cfg.max_steps or self.cfg.epochs * task.num_batches()
        self.scheduler = make_scheduler(self.optimizer, self.cfg, self.total_steps, task.higher_is_better)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cfg.amp == "fp16")
        self.step, self.epoch, self.position = 0, 0, 0  # position: next batch index within the epoch
        self.best, self.evals_without_gain, self.carry, self.bad_steps = None, 0, None, 0
        self.best_loss = None  # the validation loss of the best evaluation, where the task reports one
        if resume:
            self.load(os.path.join(folder, "checkpoint.pt"))
        loss_module = TaskLoss(task, self.model)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            loss_module = nn.parallel.DistributedDataParallel(loss_module, device_ids=ids)
        self.loss_module = loss_module
        self.run = None
        if folder is not None and self.rank == 0:
            self.run = RunFolder(folder, resume_step=self.step if resume else None)
            self.run.write_json("config.json", config.to_dict())

    # ------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "progress": {"step": self.step, "epoch": self.epoch, "position": self.position, "best": self.best,
                         "best_loss": self.best_loss, "evals_without_gain": self.evals_without_gain},
            "carry": distributed.gather(self.carry, self.world),  # every process's rows, for any resume
            "task": self.task.state_dict(),
            "config": self.config.to_dict(),
        }

    def load(self, path: str) -> None:
        state = ckpt.load(path)
        ckpt.check_model_matches(self.model, state["model"], path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        p = state["progress"]
        self.step, self.epoch, self.position = p["step"], p["epoch"], p["position"]
        self.best, self.evals_without_gain = p["best"], p["evals_without_gain"]
        self.best_loss = p.get("best_loss")  # absent from checkpoints written before ties were broken by loss
        self.carry = to_device(distributed.shard(state["carry"], self.rank, self.world, dim=1), self.device)
        ckpt.set_rng_state(state["rng"])

    def save(self) -> None:
        """Write the checkpoint (rank 0); every process takes part, since the carried state is gathered."""
        if not ckpt.all_finite(self.model):  # never put non-finite weights over a good checkpoint
            raise TrainingError(f"weights became non-finite at step {self.step}; kept the checkpoint of an earlier step")
        state = self.state()
        if self.run is not None:
            ckpt.atomic_save(state, self.run.file("checkpoint.pt"))

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
        self.scaler.step(self.optimizer)  # with fp16 loss scaling it skips inf steps itself
        self.scaler.update()
        if self.cfg.schedule == "cosine":
            self.scheduler.step()
        self.carry, self.bad_steps = carry, 0
        return total_loss / total_count

    def skip(self, why: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.carry = None  # a state that produced a non-finite loss must not seed the next batch
        self.bad_steps += 1
        self.print(f"step {self.step + 1}: skipped, {why} ({self.bad_steps} in a row)")
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise TrainingError(f"{self.bad_steps} steps in a row had a non-finite loss or gradient "
                                f"(last at step {self.step + 1}); lower --lr or --clip. "
                                "The checkpoint on disk is from the last good step.")
        return None

    # ------------------------------------------------------------ evaluation

    def evaluate(self, split: str) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=amp_dtype(self.cfg.amp),
                                             enabled=self.cfg.amp != "off"):
            return self.task.evaluate(self.model, split)

    def validate(self) -> bool:
        """Evaluate on the validation split, keep the best weights; True when patience has run out."""
        if not getattr(self.task, "has_valid", True):  # e.g. --valid-fraction 0: the last weights are tested
            return False
        metrics = self.evaluate("valid")
        if self.run is not None:
            self.run.log(self.step, self.epoch, "valid", metrics)
        value = metrics[self.task.metric]
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.print(f"step {self.step} epoch {self.epoch}: valid {shown}")
        if self.cfg.schedule == "plateau":
            self.scheduler.step(value)
        loss = metrics.get("loss")
        if improved(value, self.best, self.task.higher_is_better, loss, self.best_loss):
            self.best, self.best_loss, self.evals_without_gain = value, loss, 0
            if self.run is not None:
                ckpt.atomic_save({"model": self.model.state_dict(), "step": self.step, "metric": value},
                                 self.run.file("best.pt"))
        else:
            self.evals_without_gain += 1
        return 0 < self.cfg.patience <= self.evals_without_gain

    # ------------------------------------------------------------ the loop

    def done(self) -> bool:
        return (self.epoch >= self.cfg.epochs or bool(self.cfg.max_steps and self.step >= self.cfg.max_steps)
                or self.out_of_time())

    def out_of_time(self) -> bool:
        return bool(self.cfg.max_minutes) and time.perf_counter() - self.started > 60 * self.cfg.max_minutes

    def fit(self) -> dict[str, float]:
        """Train until the epochs, max_steps or patience run out; return the test metrics of the best weights."""
        stop, self.started = False, time.perf_counter()
        try:
            while not self.done() and not stop:
                stop = self.run_epoch()
            results = self.finish()
        finally:
            if self.run is not None:
                self.run.close()
        distributed.finish(self.world)
        return results

    def run_epoch(self) -> bool:
        """Train from the current position to the end of the epoch; True when early stopping fired."""
        n = self.task.num_batches()
        bar = progress_bar(n, self.position, f"epoch {self.epoch + 1}/{self.cfg.epochs}", self.progress and self.rank == 0)
        window, started = [], time.perf_counter()
        for batch in self.task.batches(self.epoch, self.position):
            loss = self.train_step(batch)
            self.step += 1
            self.position += 1
            if loss is not None:
                window.append(loss)
            bar.update(1)
            if self.step % LOG_EVERY == 0 and window:
                mean = sum(window) / len(window)
                bar.set_postfix(loss=f"{mean:.4g}", steps_per_s=f"{len(window) / (time.perf_counter() - started):.1f}")
                if self.run is not None:
                    self.run.log(self.step, self.epoch, "train", {"loss": mean})
                    self.run.log_grad_norms(self.step, parameter_grad_norms(self.model))
                window, started = [], time.perf_counter()
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
            if self.cfg.schedule == "step":
                self.scheduler.step()
        stop = self.validate()
        self.save()
        return stop

    def finish(self) -> dict[str, float]:
        """Test the best weights (the last ones if no validation ran), write results.json and plots."""
        if self.run is not None and os.path.exists(self.run.file("best.pt")):
            self.model.load_state_dict(ckpt.load(self.run.file("best.pt"))["model"])
        results = self.evaluate("test")
        self.print("test  " + "  ".join(f"{k} {v:.4g}" for k, v in results.items()))
        if self.run is not None:
            self.run.log(self.step, self.epoch, "test", results)
            self.run.write_json("results.json", {"step": self.step, "best_valid": self.best, "test": results})
            learning_curves(read_rows(self.run.metrics_path), self.run.file("plots"))
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
