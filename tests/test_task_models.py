"""Task models and data: the text vocabulary trains <unk>, LSTM forget gates start open."""

from rnnkit.data import UNK
from rnnkit.tasks.classify import text_task
from rnnkit.train.config import RunConfig, TaskConfig, TrainConfig


def build(train_texts, test_texts):
    config = RunConfig(task=TaskConfig(task="classify", valid_fraction=0.0), train=TrainConfig(batch_size=1))
    return text_task(config, train_texts, [0, 1] * (len(train_texts) // 2), test_texts, [0] * len(test_texts))


def test_words_seen_once_in_training_become_unk():
    task = build(["good film", "bad film", "good plot", "bad acting"], ["good unseen film"])
    itos = task.extra_state["vocab"]["itos"]
    train = task.splits["train"].sequences
    unk = 1  # <pad> is 0, <unk> is 1
    assert [s.tolist() for s in train][2][1] == unk  # "plot" is seen once: <unk> in the training data
    assert task.splits["test"].sequences[0].tolist()[1] == unk  # so is a word training never saw
    assert task.num_inputs == 5  # <pad>, <unk>, good, bad, film
    assert itos[1] == UNK and "plot" not in itos


def test_tiny_corpus_of_single_words_keeps_them_all():
    task = build(["alpha", "beta"], ["gamma"])
    assert task.num_inputs == 4  # <pad>, <unk>, alpha, beta: nothing is seen twice, so nothing is dropped


def test_lstm_forget_gates_start_open_and_other_cells_keep_torch_init():
    import torch

    from rnnkit.tasks.models import FORGET_BIAS, LanguageModel, SequenceClassifier
    from rnnkit.train.config import ModelConfig

    h = 6
    for model in (SequenceClassifier(ModelConfig(cell="lstm", hidden=h, layers=2, bidirectional=True), 3, 2, False),
                  LanguageModel(ModelConfig(cell="lstm", hidden=h, embed=4), 10)):
        biases = dict((n, p) for n, p in model.rnn.named_parameters() if n.startswith("bias"))
        assert len(biases) == (8 if isinstance(model, SequenceClassifier) else 2)
        for name, p in biases.items():
            expected = FORGET_BIAS if name.startswith("bias_ih") else 0.0
            assert torch.equal(p[h:2 * h], torch.full((h,), expected)), name
            assert p[:h].abs().max() < 1 and p[:h].abs().max() > 0  # the other gates keep torch's draw
    torch.manual_seed(0)
    gru = SequenceClassifier(ModelConfig(cell="gru", hidden=h), 3, 2, False)
    torch.manual_seed(0)
    reference = torch.nn.GRU(3, h, batch_first=True)
    assert torch.equal(gru.rnn.bias_ih_l0, reference.bias_ih_l0)
