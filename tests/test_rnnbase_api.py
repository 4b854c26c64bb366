"""torch.nn.RNNBase's argument helpers on rnnkit's layers: the same results, errors and messages as torch.nn's,
and a subclass written against torch.nn (its own forward on torch's kernel) runs unchanged on rnnkit's layer."""

from __future__ import annotations

import pytest
import torch

import rnnkit

FAMILIES = ["RNN", "LSTM", "GRU"]


def pair(name: str, **options):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(4, 3, **options)
    ours = getattr(rnnkit, name)(4, 3, **options)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def outcome(call):
    """What a call gives: ("ok", its result) or ("raised", the exception's type and message)."""
    try:
        return "ok", call()
    except Exception as e:  # noqa: BLE001  (the point is to compare whatever is raised)
        return "raised", (type(e), str(e))


def states(name: str, layers: int, batch: int, width: int, cell: int | None = None):
    h = torch.zeros(layers, batch, width)
    return (h, torch.zeros(layers, batch, cell or width)) if name == "LSTM" else h


CASES = {  # id: (options, input, batch_sizes, hidden(name))
    "padded": ({}, torch.randn(5, 2, 4), None, lambda n: states(n, 1, 2, 3)),
    "batch_first": ({"batch_first": True}, torch.randn(2, 5, 4), None, lambda n: states(n, 1, 2, 3)),
    "packed": ({}, torch.randn(7, 4), torch.tensor([3, 2, 2]), lambda n: states(n, 1, 3, 3)),
    "two_layers_bidirectional": ({"num_layers": 2, "bidirectional": True}, torch.randn(5, 2, 4), None,
                                 lambda n: states(n, 4, 2, 3)),
    "wrong_dims": ({}, torch.randn(5, 4), None, lambda n: states(n, 1, 5, 3)),
    "wrong_feature_size": ({}, torch.randn(5, 2, 6), None, lambda n: states(n, 1, 2, 3)),
    "wrong_dtype": ({}, torch.randn(5, 2, 4, dtype=torch.float64), None, lambda n: states(n, 1, 2, 3)),
    "wrong_batch_in_state": ({}, torch.randn(5, 2, 4), None, lambda n: states(n, 1, 3, 3)),
    "wrong_cell_width": ({}, torch.randn(5, 2, 4), None, lambda n: states(n, 1, 2, 3, cell=5)),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", FAMILIES)
def test_check_forward_args_and_expected_sizes_match_torch(name, case):
    options, x, batch_sizes, hidden = CASES[case]
    theirs, ours = pair(name, **options)
    for method, args in (("check_input", (x, batch_sizes)), ("get_expected_hidden_size", (x, batch_sizes)),
                         ("check_forward_args", (x, hidden(name), batch_sizes))):
        assert outcome(lambda: getattr(ours, method)(*args)) == outcome(lambda: getattr(theirs, method)(*args)), method
    if name == "LSTM":
        assert ours.get_expected_cell_size(x, batch_sizes) == theirs.get_expected_cell_size(x, batch_sizes)


def test_projection_sizes_match_torch():
    theirs, ours = pair("LSTM", proj_size=2)
    x = torch.randn(5, 2, 4)
    assert ours.get_expected_hidden_size(x, None) == theirs.get_expected_hidden_size(x, None) == (1, 2, 2)
    assert ours.get_expected_cell_size(x, None) == theirs.get_expected_cell_size(x, None) == (1, 2, 3)
    for hidden in (states("LSTM", 1, 2, 2, cell=3), states("LSTM", 1, 2, 3)):
        assert outcome(lambda: ours.check_forward_args(x, hidden, None)) == \
            outcome(lambda: theirs.check_forward_args(x, hidden, None))


@pytest.mark.parametrize("name", FAMILIES)
def test_permute_hidden_matches_torch(name):
    theirs, ours = pair(name, num_layers=2)
    hidden = states(name, 2, 4, 3)
    hidden = tuple(torch.randn_like(s) for s in hidden) if name == "LSTM" else torch.randn_like(hidden)
    permutation = torch.tensor([2, 0, 3, 1])
    for p in (permutation, None):
        got, want = ours.permute_hidden(hidden, p), theirs.permute_hidden(hidden, p)
        for g, w in zip(*((s if name == "LSTM" else (s,)) for s in (got, want)), strict=True):
            assert torch.equal(g, w)


class OwnForwardLSTM(rnnkit.LSTM):
    """A subclass in the style of code written against torch.nn.LSTM: its own forward checks the arguments
    with RNNBase's helpers and runs torch's kernel on the layer's flat weights."""

    def forward(self, input, hx=None):
        if hx is None:
            zeros = torch.zeros(self.num_layers * (2 if self.bidirectional else 1), input.size(1), self.hidden_size)
            hx = (zeros, zeros.clone())
        self.check_forward_args(input, hx, None)
        output, h, c = torch._VF.lstm(input, hx, self._flat_weights, self.bias, self.num_layers, float(self.dropout),
                                      self.training, self.bidirectional, self.batch_first)
        return output, (h, c)


def test_a_subclass_with_its_own_forward_runs_unchanged():
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(4, 3, num_layers=2)
    ours = OwnForwardLSTM(4, 3, num_layers=2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 2, 4)
    (out, (h, c)), (ref, (h_ref, c_ref)) = ours(x), theirs(x)
    for a, b in ((out, ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(2, 2, 3\), got \[2, 5, 3\]"):
        ours(x, (torch.zeros(2, 5, 3), torch.zeros(2, 2, 3)))


@pytest.mark.parametrize("name", FAMILIES)
def test_refreshing_the_flat_weights_after_swapping_a_weight_is_allowed(name):
    """Code that swaps a weight for a plain tensor (weight dropout) then asks torch.nn to refresh its cached list
    of weights; rnnkit reads the current attributes anyway, and both give the same output."""
    theirs, ours = pair(name)
    x = torch.randn(5, 2, 4)
    for layer in (theirs, ours):
        w = layer.weight_hh_l0.detach() * 0.5
        del layer.weight_hh_l0
        layer.weight_hh_l0 = w
        layer._init_flat_weights()
        layer._update_flat_weights()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])
    assert ours._flat_weights[1] is ours.weight_hh_l0
