"""Tasks: each module wires a data set, a model (rnnkit.tasks.models) and a metric into the trainer.

    registry.py     TASKS, TASK_DEFAULTS, PREDICTORS, make_task: the one list of tasks
    options.py      each task's options, one dataclass per task (read before torch loads)
    common.py       evaluation batch size, special tokens, length mask
    decoding.py     sampling, greedy and beam search for any step function
    metrics.py      edit distance, PER/WER, BLEU
    models/         the networks, one module each
    classify.py, lm.py, copy.py, seq2seq.py (g2p.py, translate.py), tagging.py, caption.py: the tasks
    gradflow.py     the gradient-flow experiment

The interface a task offers the trainer and the command line: rnnkit.train.interface.
"""

from .registry import PREDICTORS, TASK_DEFAULTS, TASKS, make_task, predictor

__all__ = ["PREDICTORS", "TASKS", "TASK_DEFAULTS", "make_task", "predictor"]
