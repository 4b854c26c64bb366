"""The task interface (rnnkit.train.interface) is what every registered task and predictor offers."""

from __future__ import annotations

import inspect

import pytest

from rnnkit.data import Vocab
from rnnkit.tasks import registry
from rnnkit.tasks.common import BOS, EOS, SPECIALS, special_id
from rnnkit.train.interface import Predictor, Task, TaskBase


def task_class(path: str) -> type:
    """The class a TASKS entry builds: the builder itself, or the class its return annotation names."""
    built = registry.load(path)
    if inspect.isclass(built):
        return built
    annotation = inspect.signature(built).return_annotation
    module = inspect.getmodule(built)
    return getattr(module, annotation) if isinstance(annotation, str) else annotation


@pytest.mark.parametrize("name", list(registry.TASKS))
def test_every_task_offers_the_interface(name):
    cls = task_class(registry.TASKS[name][0])
    assert issubclass(cls, TaskBase), cls
    for member in ("build_model", "num_batches", "batches", "loss", "evaluate", "state_dict", "save_plots"):
        assert callable(getattr(cls, member, None)), (cls, member)
    assert {"metric", "higher_is_better", "has_valid"} <= set(Task.__annotations__)


@pytest.mark.parametrize("name", list(registry.PREDICTORS))
def test_every_predictor_offers_the_interface(name):
    cls = registry.predictor(name)
    for member in ("for_inference", "build_model", "predict"):
        assert callable(getattr(cls, member, None)), (cls, member)
    assert isinstance(registry.PREDICTORS[name][1], str) and registry.PREDICTORS[name][1]
    assert hasattr(Predictor, "for_inference")


def test_special_tokens_are_read_in_the_older_spelling_too():
    """g2p and translate runs written before one spelling hold <s> and </s> at the same ids."""
    old = Vocab(["<pad>", "<unk>", "<s>", "</s>", "a"], specials=["<pad>", "<unk>", "<s>", "</s>"])
    new = Vocab([*SPECIALS, "a"], specials=SPECIALS)
    assert (special_id(old, BOS), special_id(old, EOS)) == (special_id(new, BOS), special_id(new, EOS)) == (2, 3)
