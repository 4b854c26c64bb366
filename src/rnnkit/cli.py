"""rnnkit's command line: a thin layer over rnnkit.train and rnnkit.tasks.

    rnnkit demo                         char-level LSTM on the standard library, then gradient flow
    rnnkit train TASK [options]         train; writes one run folder (rnnkit train --help lists tasks)
    rnnkit eval RUN [--split test]      metrics of a run's best weights
    rnnkit generate RUN --prompt TEXT   continue text with a trained language model
    rnnkit gradflow                     ||dL/dh_t|| against distance for RNN, LSTM and GRU
    rnnkit datasets                     which data sets this machine has, and how to install the rest

Training options are generated from the config dataclasses (rnnkit.train.config; each task's own
options from its dataclass in rnnkit.tasks.options, which `rnnkit train TASK --help` lists), so
every subcommand spells them the same way, and rnnkit.train.config is where their values are
checked (and an option of another task refused). Errors a user can fix print one line and exit
with 2; Ctrl-C exits with 130.

A subcommand is a function cmd_NAME(args) and a sub-parser in build_parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

# Only the standard library at import time: the rest is imported inside main(), so that Ctrl-C
# while torch is still loading ends like any other interrupt (exit 130, one line).


# The exceptions that are the user's to fix: one line on stderr, exit status 2. Named by module, not
# imported: an exception of a class whose module was never loaded cannot have been raised, and importing
# them would load torch before an option error could answer.
USER_ERRORS = (("rnnkit.data.errors", "DataError"), ("rnnkit.train.checkpoint", "CheckpointError"),
               ("rnnkit.train.files", "RunFolderError"), ("rnnkit.train.trainer", "TrainingError"),
               ("rnnkit.train.export", "ExportError"))


def is_user_error(e: BaseException) -> bool:
    if isinstance(e, (ValueError, OSError)):
        return True
    return any(isinstance(e, getattr(sys.modules[module], name)) for module, name in USER_ERRORS
               if module in sys.modules)


# ---------------------------------------------------------------- options from dataclasses


def add_option(group, section: str, f: dataclasses.Field, show: bool = True, default=dataclasses.MISSING) -> None:
    """--field-name for one config field; its default stays None so that only what the user typed overrides
    (`default`: the one the help names, where a task changes the field's own)."""
    flag = "--" + f.name.replace("_", "-")
    default = f.default if default is dataclasses.MISSING else default
    help_text = f"{f.metadata['help']} (default: {default})" if show else argparse.SUPPRESS
    if isinstance(f.default, bool):
        group.add_argument(flag, dest=f"{section}.{f.name}", action=argparse.BooleanOptionalAction,
                           default=None, help=help_text)
    else:
        group.add_argument(flag, dest=f"{section}.{f.name}", type=type(f.default), default=None,
                           choices=f.metadata.get("choices"), help=help_text, metavar=f.name.upper())


def add_config_options(parser: argparse.ArgumentParser, task: str | None = None) -> None:
    """One --option per config field: those of `task` (None: of every task, help left to each task's
    --help), then the model and train sections."""
    from .tasks import TASK_DEFAULTS, TASKS
    from .train.config import SECTIONS

    if task is not None:
        group = parser.add_argument_group(f"options of task {task}")
        for f in dataclasses.fields(TASKS[task].options):
            add_option(group, "task", f)
    else:  # every task's flags parse (an option of another task is refused with a message, not by argparse)
        seen = set()
        for entry in TASKS.values():
            for f in dataclasses.fields(entry.options):
                if f.name not in seen:
                    seen.add(f.name)
                    add_option(parser, "task", f, show=False)
    for section, kind in SECTIONS.items():
        group = parser.add_argument_group(f"{section} options")
        changed = TASK_DEFAULTS.get(task, {}).get(section, {})
        for f in dataclasses.fields(kind):
            add_option(group, section, f, default=changed.get(f.name, f.default))


def given_options(args: argparse.Namespace) -> dict[str, dict]:
    """{section: {field: value}} for the options present on the command line."""
    from .train.config import SECTIONS

    out = {s: {} for s in ("task", *SECTIONS)}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            out[section][name] = value
    return out


def config_from_args(args: argparse.Namespace):
    """The RunConfig of `rnnkit train TASK ...`; an option the task does not take is a ConfigError."""
    from .tasks import TASK_DEFAULTS
    from .train.config import SECTIONS, RunConfig, TaskConfig

    given = given_options(args)
    for section, values in TASK_DEFAULTS.get(args.task, {}).items():
        given[section] = {**values, **given[section]}
    return RunConfig(task=TaskConfig(args.task, **given["task"]),
                     **{name: kind(**given[name]) for name, kind in SECTIONS.items()})


# ---------------------------------------------------------------- subcommands


def cmd_train(args) -> None:
    from .tasks import TASKS
    from .train.config import check_fields, check_machine

    # the options first, before torch loads: a mistyped option answers at once
    if args.resume:
        extra = {k for section in given_options(args).values() for k in section} - {"epochs", "max_steps"}
        if extra or args.task:
            raise ValueError("--resume continues a run with its own config.json; only --epochs and --max-steps "
                             f"may be given with it (got {', '.join(sorted(extra)) or args.task})")
        folder = args.resume
        config = load_config(folder)
        config.train = dataclasses.replace(config.train, **given_options(args)["train"])
    else:
        if not args.task:
            raise ValueError(f"name a task: rnnkit train TASK, with TASK one of {', '.join(TASKS)}")
        config = config_from_args(args)
    check_fields(config)

    from .tasks import make_task
    from .train.distributed import launched_rank
    from .train.runlog import RunFolder, RunFolderError, default_name, run_files
    from .train.trainer import Trainer

    check_machine(config)
    rank, run = launched_rank(), None
    if args.resume:
        if rank == 0:
            run = RunFolder.reopen(folder)  # refused at once if another process trains this run
    else:
        folder = args.out or os.path.join("runs", default_name(config.task.task, config.model.cell))
        if args.out and os.path.isdir(folder) and run_files(folder):  # checked again, under the lock
            raise RunFolderError(f"{folder} already holds a run; continue it with --resume {folder} "
                                 "or pick another --out")
    try:
        task = make_task(config)
        trainer = Trainer(task, config, folder, resume=bool(args.resume), progress=not args.no_progress,
                          unique=not args.out and not args.resume, run=run)
    except BaseException:
        if run is not None:
            run.close()
        raise
    trainer.fit()
    if trainer.rank == 0:
        print(f"run folder: {trainer.folder}")


def load_config(folder: str):
    """The run's config.json, every field checked (a hand-edited or damaged one is refused)."""
    from .train.config import RunConfig, check_fields

    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):  # answered before torch loads: a mistyped RUN is an argument error
        raise FileNotFoundError(f"{folder} is not a run folder (no config.json); pass the folder rnnkit train wrote")
    from .train.checkpoint import CheckpointError

    try:
        with open(path) as f:
            config = RunConfig.from_dict(json.load(f))
        check_fields(config)
        return config
    except (ValueError, TypeError, AttributeError) as e:  # cut JSON, not an object, an unknown field, a bad value
        raise CheckpointError(f"{path} is not a valid rnnkit config ({e}); restore it from a copy "
                              "or train the run again") from None


def load_weights(folder: str, model, task: str) -> dict:
    """Load the run's best weights (or its latest checkpoint) into model; returns the checkpoint dict."""
    from .train import checkpoint as ckpt

    best = os.path.join(folder, "best.pt")
    path = best if os.path.exists(best) else os.path.join(folder, "checkpoint.pt")
    state = ckpt.load(path, task=task)
    ckpt.check_model_matches(model, state["model"], path)
    model.load_state_dict(state["model"])
    return state


def task_state(folder: str, task: str, keys) -> dict:
    """The task's own state (vocabularies, ...) from the run's checkpoint, holding `keys`."""
    from .train import checkpoint as ckpt

    path = os.path.join(folder, "checkpoint.pt")
    return ckpt.task_state(ckpt.load(path, task=task), path, keys)


def cmd_eval(args) -> None:
    config = load_config(args.run)
    import torch

    from .tasks import make_task
    from .train.trainer import show

    task = make_task(config)
    if args.split == "valid" and not task.has_valid:
        raise ValueError(f"{args.run} has no validation split (trained with --valid-fraction 0); use --split test")
    model = task.build_model()
    load_weights(args.run, model, config.task.task)
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, args.split)
    print(f"{args.split}  " + show(metrics))


def cmd_export(args) -> None:
    """rnnkit export RUN --format onnx|pt2: the run's best weights, exported, reloaded and checked on a batch."""
    config = load_config(args.run)
    from .tasks import make_task
    from .train.export import dynamic_everywhere, export_and_check

    task = make_task(config)
    model = task.build_model()
    load_weights(args.run, model, config.task.task)
    inputs = task.export_inputs(next(iter(task.batches(0, 0))))
    path = args.out or os.path.join(args.run, f"model.{args.format}")
    difference = export_and_check(model, inputs, args.format, path, dynamic_everywhere(inputs))
    print(f"wrote {path} ({args.format}); largest difference from the PyTorch model on a training batch: "
          f"{difference:.3g}")


def cmd_generate(args) -> None:
    from .data import Vocab
    from .tasks.lm import generate
    from .tasks.models.language import LanguageModel

    config = load_config(args.run)
    if config.task.task != "lm":
        raise ValueError(f"{args.run} is a {config.task.task!r} run; generate needs a language model (rnnkit train lm)")
    state = task_state(args.run, "lm", ("vocab", "level"))
    vocab = Vocab.from_dict(state["vocab"])
    model = LanguageModel(config.model, len(vocab))
    load_weights(args.run, model, "lm")
    text = generate(model, vocab, state["level"], args.prompt, args.length, method=args.method,
                    temperature=args.temperature, top_k=args.top_k, beam=args.beam, seed=args.seed)
    print(args.prompt + text)


def latest_run(task: str, root: str = "runs") -> str:
    """The newest run folder under root trained on `task`."""
    runs = [os.path.join(root, d) for d in os.listdir(root)] if os.path.isdir(root) else []
    runs = [r for r in runs if os.path.isfile(os.path.join(r, "checkpoint.pt"))
            and load_config(r).task.task == task]
    if not runs:
        raise ValueError(f"no {task} run under {root}/; train one (rnnkit train {task}) or pass --run RUN")
    return max(runs, key=lambda r: os.path.getmtime(os.path.join(r, "checkpoint.pt")))


def cmd_predict(args) -> None:
    """rnnkit g2p/translate/tag/caption INPUT...: one output line per input, from a trained run."""
    from .tasks import predictor

    run = args.run or latest_run(args.command)
    config = load_config(run)
    if config.task.task != args.command:
        raise ValueError(f"{run} is a {config.task.task!r} run; rnnkit {args.command} needs a {args.command} run")
    task = predictor(args.command).for_inference(config, task_state(run, args.command, ()))
    model = task.build_model()
    load_weights(run, model, args.command)
    model.eval()
    for given, answer in zip(args.inputs, task.predict(model, args.inputs)):
        print(f"{given}\t{answer}")


def cmd_gradflow(args) -> None:
    from .tasks import gradflow

    results = gradflow.run(length=args.length, steps=args.steps, hidden=args.hidden, seed=args.seed,
                           progress=not args.no_progress)
    for path in gradflow.save(results, args.out):
        print(f"wrote {path}")


def cmd_datasets(args) -> None:
    from .data import describe_sources

    for name, available, where, description in describe_sources():
        mark = "yes" if available else "no "
        print(f"{mark}  {name:14s} {description}\n     {'at ' if available else 'install: '}{where}")


def cmd_demo(args) -> None:
    from . import demo

    demo.main(args.out, args.quick)


# ---------------------------------------------------------------- the parser


def train_parser_text(task: str | None = None) -> dict:
    """The description of rnnkit train's --help: every task with its options, or the one task's."""
    from .tasks import TASKS

    if task is not None:
        return dict(formatter_class=argparse.RawDescriptionHelpFormatter,
                    description=f"task {task}: {TASKS[task].description}")
    lines = []
    for name, entry in TASKS.items():
        flags = ", ".join("--" + f.name.replace("_", "-") for f in dataclasses.fields(entry.options))
        lines.append(f"  {name:14s} {entry.description}\n  {'':14s} options: {flags or 'none'}")
    return dict(formatter_class=argparse.RawDescriptionHelpFormatter,
                description="tasks (rnnkit train TASK --help describes a task's own options):\n" + "\n".join(lines))


class TrainHelp(argparse.Action):
    """-h/--help of rnnkit train: after a task name, that task's options; otherwise every task."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show this help and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        task = getattr(namespace, "task", None)
        if task is not None:
            parser = argparse.ArgumentParser(prog=parser.prog, usage=f"{parser.prog} {task} [options]", add_help=False,
                                             **train_parser_text(task))
            add_train_arguments(parser, task)
        parser.print_help()
        parser.exit()


def add_train_arguments(p: argparse.ArgumentParser, task: str | None = None) -> None:
    from .tasks import TASKS

    p.add_argument("-h", "--help", action=TrainHelp)
    if task is None:  # a task's own --help shows its options, not the task argument again
        p.add_argument("task", nargs="?", choices=list(TASKS), metavar="TASK", help="the task (listed above)")
    p.add_argument("--out", help="run folder (default: runs/TASK-CELL-TIME)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_options(p, task)


def build_parser() -> argparse.ArgumentParser:
    from .tasks import PREDICTORS

    parser = argparse.ArgumentParser(prog="rnnkit", description="Train and inspect recurrent networks (RNN, LSTM, GRU).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="char-level LSTM on the standard library, then gradient flow (about 2 minutes)")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's runs and plots")
    p.add_argument("--quick", action="store_true", help="a few seconds of each part (for tests)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model on a task", add_help=False, **train_parser_text())
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's best weights")
    p.add_argument("run", metavar="RUN", help="a run folder written by rnnkit train")
    p.add_argument("--split", default="test", choices=("valid", "test"), help="which split (default: test)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="continue a prompt with a trained language model")
    p.add_argument("run", metavar="RUN", help="a run folder of rnnkit train lm")
    p.add_argument("--prompt", required=True, help="text to continue; every character must be in the vocabulary")
    p.add_argument("--length", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--method", default="sample", choices=("sample", "greedy", "beam"), help="decoding (default: sample)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--beam", type=int, default=4, help="beam width for --method beam (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("gradflow", help="plot ||dL/dh_t|| against distance for RNN, LSTM and GRU")
    p.add_argument("--length", type=int, default=100, help="adding-problem length T (default: 100)")
    p.add_argument("--steps", type=int, default=400, help="training steps per cell (default: 400)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", default="runs/gradflow", help="folder for gradflow.png and gradflow.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_gradflow)

    for command, (_, help_text) in PREDICTORS.items():
        p = sub.add_parser(command, help=help_text)
        p.add_argument("inputs", nargs="+", metavar="INPUT", help="what to run the model on")
        p.add_argument("--run", help=f"a {command} run folder (default: the newest under runs/)")
        p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a run's model to ONNX or torch.export's .pt2, checked against it")
    p.add_argument("run", metavar="RUN", help="a run folder written by rnnkit train")
    p.add_argument("--format", required=True, choices=("onnx", "pt2"),
                   help="onnx (needs the [export] extra) or pt2 (torch.export; load it after import rnnkit.engines)")
    p.add_argument("--out", help="the file to write (default: RUN/model.FORMAT)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("datasets", help="which data sets this machine has, and the install command for the rest")
    p.set_defaults(func=cmd_datasets)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        try:
            args.func(args)
        except Exception as e:
            if not is_user_error(e) or os.environ.get("RNNKIT_DEBUG"):
                raise
            print(f"rnnkit: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        after = ("; the last checkpoint is intact (continue with rnnkit train --resume RUN)"
                 if argv_command(argv) == "train" else "")
        print(f"rnnkit: interrupted{after}", file=sys.stderr)
        return 130
    return 0


def argv_command(argv) -> str | None:
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not str(a).startswith("-")]
    return str(words[0]) if words else None


if __name__ == "__main__":
    sys.exit(main())
