"""The trainer: truncated BPTT, bit-identical resume, non-finite steps, clipping, early stopping, checkpoints."""

from __future__ import annotations

import math
import os

import pytest
import torch

from rnnkit.tasks import make_task
from rnnkit.tasks.lm import LanguageModelTask
from rnnkit.testing import assert_close, event_scalars
from rnnkit.train import checkpoint as ckpt
from rnnkit.train import tbptt
from rnnkit.train.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
from rnnkit.train.trainer import Trainer, TrainingError, improved

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200))
SHORT_TEXT = TEXT[:800]  # 4 columns of 200 steps: 12 windows of 16 per epoch


def lm_config(**train) -> RunConfig:
    return RunConfig(task=TaskConfig(task="lm"), model=ModelConfig(cell="lstm", hidden=12, embed=8, dropout=0.2),
                     train=TrainConfig(**{"epochs": 2, "batch_size": 4, "bptt": 16, "lr": 3e-3, **train}))


def adding_config(**train) -> RunConfig:
    return RunConfig(task=TaskConfig(task="adding", length=12, examples=96), model=ModelConfig(cell="gru", hidden=8,
                     dropout=0.1, layers=2), train=TrainConfig(**{"epochs": 2, "batch_size": 16, "lr": 3e-3, **train}))


def quiet(*args) -> None:
    pass


def final_weights(task, config, folder, **kw) -> dict:
    trainer = Trainer(task, config, folder, progress=False, print_fn=quiet, **kw)
    trainer.fit()
    return trainer.model.state_dict()


# ---------------------------------------------------------------- truncated BPTT


@pytest.mark.parametrize("length,k1,k2", [(10, 4, 4), (10, 4, 6), (9, 3, 9), (7, 10, 10), (1, 1, 1)],
                         ids=["tiled", "overlap", "k2-covers-all", "one-window", "one-step"])
def test_windows_score_every_step_once_and_carry_from_the_next_start(length, k1, k2):
    ws = tbptt.windows(length, k1, k2)
    scored = [t for w in ws for t in range(w.loss_start, w.end)]
    assert scored == list(range(length))
    for w, nxt in zip(ws, ws[1:]):
        assert w.carry_at == nxt.start  # the carried state is exactly the next window's initial state
        assert nxt.end - nxt.start <= k2 and w.start <= w.carry_at <= w.end


def test_windows_reject_k2_below_k1():
    with pytest.raises(ValueError, match="k1 <= k2"):
        tbptt.windows(10, 5, 3)


def lm_grads(model, x, y, window, state) -> tuple[list[torch.Tensor], object]:
    model.zero_grad()
    logits, carried = tbptt.run_window(model, x, window, state)
    logits.flatten(0, 1).mul(torch.randn(logits.numel(), generator=torch.Generator().manual_seed(1))
                              .view(-1, logits.shape[-1])).sum().backward()  # random upstream gradient
    return [p.grad.clone() for p in model.parameters()], carried


def test_truncated_bptt_equals_full_bptt_when_one_window_covers_the_sequence():
    task = LanguageModelTask(lm_config(bptt=200), text=TEXT)
    torch.manual_seed(0)
    model = task.build_model().double().eval()
    x = task.train_columns[:, :200]
    (window,) = tbptt.windows(x.shape[1], 200, 200)
    got, _ = lm_grads(model, x, None, window, None)
    model.zero_grad()
    logits, _ = model(x)  # full BPTT, no windows
    logits.flatten(0, 1).mul(torch.randn(logits.numel(), generator=torch.Generator().manual_seed(1))
                              .view(-1, logits.shape[-1])).sum().backward()
    for g, p in zip(got, model.parameters()):
        assert_close(g, p.grad, kind="grad", what="TBPTT with one window vs full BPTT")


def test_overlapping_window_backpropagates_k2_steps_from_the_carried_state():
    """TBPTT(k1=4, k2=10): the window starts at the carried state 6 steps before its scored part."""
    task = LanguageModelTask(lm_config(), text=TEXT)
    torch.manual_seed(0)
    model = task.build_model().double().eval()
    x = task.train_columns[:, :30]
    ws = tbptt.windows(30, 4, 10)
    carried = None
    for w in ws[:3]:  # carry through the first windows as training does
        _, carried = tbptt.run_window(model, x, w, carried)
    w = ws[3]
    got, _ = lm_grads(model, x, None, w, carried)
    # by hand: the state before w.start from an uninterrupted forward, detached; then k2 steps with gradient
    with torch.no_grad():
        _, state = model(x[:, :w.start])
    model.zero_grad()
    logits, _ = model(x[:, w.start:w.end], state)
    scored = logits[:, w.loss_start - w.start:]
    scored.flatten(0, 1).mul(torch.randn(scored.numel(), generator=torch.Generator().manual_seed(1))
                             .view(-1, scored.shape[-1])).sum().backward()
    assert (w.start, w.loss_start, w.end) == (6, 12, 16)
    for g, p in zip(got, model.parameters()):
        assert_close(g, p.grad, kind="grad", what="TBPTT(4, 10) window vs by hand")


# ---------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def interrupt_at(task, step: int):
    """Make task.loss raise when the trainer reaches optimizer step `step` (a kill, as far as the run can tell)."""
    loss, calls = task.loss, [0]

    def killing_loss(*args):
        calls[0] += 1
        if calls[0] == step:
            raise Interrupt
        return loss(*args)

    task.loss = killing_loss




@pytest.mark.parametrize("kind,kill_at", [("lm", 6), ("lm", 13), ("adding", 5), ("adding", 9)],
                         ids=["lm-mid-epoch", "lm-next-epoch", "adding-mid-epoch", "adding-after-epoch"])
def test_a_killed_run_resumes_to_the_bit_identical_result(tmp_path, kind, kill_at):
    # eval_every 5 puts validation rows between checkpoints; the checkpoints at odd epoch ends (lm: 12
    # windows, adding: 6 batches per epoch) fall between the logged training-loss rows (every 10 steps)
    config = (lm_config if kind == "lm" else adding_config)(checkpoint_every=2, schedule="cosine", eval_every=5)
    make = (lambda: LanguageModelTask(config, text=SHORT_TEXT)) if kind == "lm" else (lambda: make_task(config))
    straight = final_weights(make(), config, str(tmp_path / "straight"))

    task = make()
    interrupt_at(task, kill_at)
    with pytest.raises(Interrupt):
        final_weights(task, config, str(tmp_path / "killed"))
    resumed = final_weights(make(), config, str(tmp_path / "killed"), resume=True)

    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    steps = lambda run: [r.split(",")[0] for r in open(tmp_path / run / "metrics.csv").read().splitlines()[1:]]
    assert steps("straight") == steps("killed")  # the log holds no row twice after a resume
    for log in ("metrics.csv", "grad_norms.csv", "results.json"):  # the logs are as exact as the weights
        assert (tmp_path / "killed" / log).read_text() == (tmp_path / "straight" / log).read_text(), log
    assert event_scalars(tmp_path / "killed") == event_scalars(tmp_path / "straight")
    assert len(event_scalars(tmp_path / "straight")) > 10


# ---------------------------------------------------------------- non-finite steps, clipping, early stopping


def poison(task, bad_steps: set[int]):
    """Make the loss NaN at the given (1-based) calls."""
    loss, calls = task.loss, [0]

    def nan_loss(*args):
        calls[0] += 1
        value, count, carry = loss(*args)
        return (value * float("nan") if calls[0] in bad_steps else value), count, carry

    task.loss = nan_loss


def test_a_non_finite_loss_skips_the_step_and_says_so(tmp_path):
    config = adding_config(epochs=1, max_steps=4)
    task = make_task(config)
    poison(task, {2})
    messages = []
    trainer = Trainer(task, config, str(tmp_path / "run"), progress=False, print_fn=messages.append)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step(next(iter(task.batches(0, 0))))
    after_one = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.train_step(next(iter(task.batches(0, 1)))) is None
    assert any("skipped" in m and "nan" in m for m in messages)
    for k in before:
        assert torch.equal(after_one[k], trainer.model.state_dict()[k]), k  # the skipped step changed nothing
    assert any(not torch.equal(before[k], after_one[k]) for k in before)  # while the good step did change weights


def test_a_run_that_keeps_diverging_stops_and_keeps_the_good_checkpoint(tmp_path):
    config = adding_config(epochs=3, checkpoint_every=2, max_bad_steps=3)
    task = make_task(config)
    poison(task, set(range(5, 100)))
    folder = str(tmp_path / "run")
    with pytest.raises(TrainingError, match=r"3 steps in a row.*\(steps 5 to 7\); lower --lr.*"
                                            r"the checkpoint on disk is from step 4 \(the first bad step was 5\)"):
        final_weights(task, config, folder)
    state = ckpt.load(os.path.join(folder, "checkpoint.pt"))
    # steps 5 and 6 were skipped and 7 was the third bad one in a row: no checkpoint is written during
    # such a streak (not at step 6 either), so the one on disk is from before the first bad step
    assert state["progress"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not os.path.exists(os.path.join(folder, "results.json"))


def test_gradient_clipping_by_global_norm_and_by_value():
    config = adding_config(clip=1e-3, lr=1.0, schedule="none")
    config.train.optimizer = "sgd"
    task = make_task(config)
    trainer = Trainer(task, config, None, progress=False, print_fn=quiet)
    batch = next(iter(task.batches(0, 0)))
    trainer.train_step(batch)
    norm = torch.cat([p.grad.flatten() for p in trainer.model.parameters()]).norm()
    assert norm <= 1e-3 * (1 + 1e-4)
    config = adding_config(clip=0.0, clip_value=1e-4)
    trainer = Trainer(make_task(config), config, None, progress=False, print_fn=quiet)
    trainer.train_step(batch)
    assert max(float(p.grad.abs().max()) for p in trainer.model.parameters()) <= 1e-4


def test_early_stopping_after_patience_evaluations_without_gain(tmp_path):
    config = adding_config(epochs=20, lr=0.0, patience=2)  # lr 0: the metric can never improve
    trainer = Trainer(make_task(config), config, str(tmp_path / "run"), progress=False, print_fn=quiet)
    trainer.fit()
    assert trainer.epoch == 3  # one evaluation sets the best, two more without gain stop the run
    assert os.path.exists(tmp_path / "run" / "results.json")


# ---------------------------------------------------------------- checkpoints


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    ckpt.atomic_save({"model": {"w": torch.ones(3)}}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt.load(path)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


def test_truncated_and_foreign_checkpoints_are_refused(tmp_path):
    path = str(tmp_path / "c.pt")
    ckpt.atomic_save({"model": {"w": torch.ones(100)}}, path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.load(path)
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ckpt.CheckpointError, match=r"weight is \(2, 4\) there and \(2, 3\) here"):
        ckpt.check_model_matches(model, torch.nn.Linear(4, 2).state_dict(), path)


def test_the_test_split_is_scored_with_the_best_validation_weights(tmp_path):
    config = adding_config(epochs=3)
    task = make_task(config)
    scripted = iter([0.3, 0.1, 0.2])  # valid mse per epoch: the second epoch's weights are the best
    fingerprint = lambda model: float(sum(p.detach().double().sum() for p in model.parameters()))
    task.evaluate = lambda model, split: {"mse": next(scripted) if split == "valid" else fingerprint(model)}
    trainer = Trainer(task, config, str(tmp_path / "run"), progress=False, print_fn=quiet)
    results = trainer.fit()
    best = ckpt.load(str(tmp_path / "run" / "best.pt"))
    assert best["step"] == 2 * task.num_batches()
    model = task.build_model()
    model.load_state_dict(best["model"])
    assert results["mse"] == fingerprint(model)
    last = ckpt.load(str(tmp_path / "run" / "checkpoint.pt"))["model"]
    assert any(not torch.equal(last[k], best["model"][k]) for k in last)


def test_a_validation_tie_keeps_the_weights_with_the_lower_loss(tmp_path):
    config = adding_config(epochs=3)
    task = make_task(config)
    task.metric = "accuracy"
    task.higher_is_better = True
    scripted = iter([(0.5, 0.9), (0.5, 0.7), (0.5, 0.8)])  # (accuracy, loss): a three-way tie, epoch 2 lowest loss

    def evaluate(model, split):
        accuracy, loss = next(scripted) if split == "valid" else (0.0, 0.0)
        return {"accuracy": accuracy, "loss": loss}

    task.evaluate = evaluate
    trainer = Trainer(task, config, str(tmp_path / "run"), progress=False, print_fn=quiet)
    trainer.fit()
    assert ckpt.load(str(tmp_path / "run" / "best.pt"))["step"] == 2 * task.num_batches()
    assert (trainer.best, trainer.best_loss) == (0.5, 0.7)


def test_a_step_is_evaluated_once_and_counts_once_against_patience(tmp_path):
    """--eval-every 3 with 6 batches per epoch: step 6 ends the epoch too, on the same weights."""
    config = adding_config(epochs=5, lr=0.0, patience=2, eval_every=3)  # lr 0: the metric never improves
    task = make_task(config)
    evaluated = []
    evaluate = task.evaluate
    task.evaluate = lambda model, split: (evaluated.append(trainer.step) if split == "valid" else None) \
        or evaluate(model, split)
    trainer = Trainer(task, config, str(tmp_path / "run"), progress=False, print_fn=quiet)
    trainer.fit()
    assert evaluated == [3, 6, 9]  # 3 sets the best, 6 and 9 do not improve: patience 2 is spent at 9, not 6
    rows = [r for r in open(tmp_path / "run" / "metrics.csv").read().splitlines() if ",valid," in r]
    assert [r.split(",")[0] for r in rows] == ["3", "6", "9"]


def test_a_non_finite_validation_metric_never_becomes_best_pt(tmp_path):
    config = adding_config(epochs=2)
    task = make_task(config)
    task.evaluate = lambda model, split: {"mse": math.inf if split == "valid" else 0.5}
    messages = []
    trainer = Trainer(task, config, str(tmp_path / "run"), progress=False, print_fn=messages.append)
    trainer.fit()
    assert not os.path.exists(tmp_path / "run" / "best.pt") and trainer.best is None
    assert "valid mse inf" in "\n".join(messages)  # shown as what it is
    assert not improved(math.nan, None, False) and not improved(math.inf, 1.0, True)


def test_a_run_that_diverges_from_its_first_step_writes_no_checkpoint_and_says_so(tmp_path):
    config = adding_config(epochs=3, checkpoint_every=1, max_bad_steps=3)
    task = make_task(config)
    poison(task, set(range(1, 100)))
    with pytest.raises(TrainingError, match=r"\(steps 1 to 3\).*no checkpoint was written before it "
                                            r"\(the first bad step was 1\)"):
        final_weights(task, config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoint.pt")
    assert not os.path.exists(tmp_path / "run" / "best.pt")


def test_an_optimizer_step_that_overflows_is_a_training_error(tmp_path):
    config = adding_config(lr=1e38)  # Adam's first step is lr / (1 - beta1) = 1e39: beyond float32
    with pytest.raises(TrainingError, match=r"optimizer step 1 overflowed .*--lr 1e\+38 is too large for "
                                            r"torch.float32 weights; no checkpoint was written before it"):
        final_weights(make_task(config), config, str(tmp_path / "run"))


def test_perplexity_too_large_to_show_is_inf_not_capped():
    from rnnkit.tasks.lm import perplexity
    from rnnkit.train.trainer import show

    assert perplexity(60.0) == math.exp(60.0)  # was capped at exp(50)
    assert show({"loss": 800.0, "perplexity": perplexity(800.0)}) == "loss 800  perplexity inf"


def test_improved():
    assert improved(0.6, 0.5, True) and not improved(0.4, 0.5, True) and improved(0.4, 0.5, False)
    assert not improved(0.5, 0.5, True)  # a tie without losses keeps the earlier weights
    assert improved(0.5, 0.5, True, loss=0.7, best_loss=0.8) and not improved(0.5, 0.5, True, 0.9, 0.8)
    assert improved(0.1, None, False)


def test_a_checkpoint_from_before_ties_were_broken_by_loss_still_resumes(tmp_path):
    """Checkpoints written before best_loss existed hold no such key: resuming leaves it unset."""
    folder = str(tmp_path / "run")
    Trainer(make_task(adding_config(epochs=1)), adding_config(epochs=1), folder, progress=False, print_fn=quiet).fit()
    path = os.path.join(folder, "checkpoint.pt")
    old = ckpt.load(path)
    del old["progress"]["best_loss"]
    ckpt.atomic_save(old, path)
    config = adding_config(epochs=2)
    trainer = Trainer(make_task(config), config, folder, resume=True, progress=False, print_fn=quiet)
    assert trainer.best == old["progress"]["best"] and trainer.best_loss is None
    trainer.fit()
    assert trainer.epoch == 2
