"""torch.nn's module in place of an rnnkit one, holding the same Parameter objects: what torch.jit.script compiles.

TorchScript cannot compile rnnkit's engines (Python operators, Numba, Triton). torch.jit.script first calls
each module's `__prepare_scriptable__` and compiles what it returns, so an rnnkit RNN, LSTM, GRU or cell
built with engine="auto" returns its torch.nn twin: the same arguments, the very same Parameter objects
(training the scripted module trains the rnnkit one, and the reverse), torch.nn's numbers, which rnnkit's
equal within the float tolerance. torch.jit.script puts the twin in the parent module's place too (its own
mechanism); the twin's `state_dict` is the same. What has no twin raises, saying what to use instead:
cells torch.nn lacks (layer norm, peepholes, zoneout, recurrent dropout, DropConnect, minGRU/minLSTM,
sLSTM), an engine named explicitly (which never falls back silently), and subclasses (their own forward
would be lost).
"""

from __future__ import annotations

from torch import nn

LAYERS = {"RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}
CELLS = {"RNN_TANH": nn.RNNCell, "RNN_RELU": nn.RNNCell, "LSTM": nn.LSTMCell, "GRU": nn.GRUCell}
INSTEAD = "use torch.jit.trace, torch.export.export or torch.compile instead"


def refuse(module, why: str) -> RuntimeError:
    return RuntimeError(f"{type(module).__name__}: torch.jit.script cannot compile {why}; {INSTEAD}")


def check(module, plain_class: type) -> None:
    """Raise unless `module` is exactly rnnkit's class (not a subclass) and runs engine="auto"."""
    if type(module) is not plain_class and type(module).__module__.startswith("rnnkit."):
        raise refuse(module, "this cell family (torch.nn has no such layer, and rnnkit's engines are Python operators)")
    if type(module) is not plain_class:
        raise refuse(module, "a subclass of an rnnkit module (rnnkit's engines are Python operators, and scripting "
                             "torch.nn's module in its place would drop its own forward)")
    if module.engine != "auto":
        raise refuse(module, f"engine={module.engine!r} (an engine named explicitly never falls back; scripting "
                             "runs torch.nn's implementation, which engine='auto' allows)")


def layer_twin(layer, plain_class: type) -> nn.Module:
    """The torch.nn RNN, LSTM or GRU of `layer`, holding its Parameter objects."""
    check(layer, plain_class)
    if (layer.layer_norm or layer.peephole or layer.zoneout_h or layer.zoneout_c or layer.recurrent_dropout
            or layer.weight_drop):
        raise refuse(layer, "layer norm, peepholes, zoneout, recurrent dropout or DropConnect (torch.nn has no such "
                            "layer)")
    kwargs = {"num_layers": layer.num_layers, "bias": layer.bias, "batch_first": layer.batch_first,
              "dropout": layer.dropout, "bidirectional": layer.bidirectional, "device": "meta"}
    if layer.mode == "LSTM":
        kwargs["proj_size"] = layer.proj_size
    if layer.mode.startswith("RNN"):
        kwargs["nonlinearity"] = layer.nonlinearity
    twin = LAYERS[layer.mode](layer.input_size, layer.hidden_size, **kwargs)  # meta: its own weights are replaced
    for name in layer._flat_weights_names:
        setattr(twin, name, getattr(layer, name))  # RNNBase.__setattr__ keeps twin._flat_weights in step
    return twin.train(layer.training)


def cell_twin(cell, plain_class: type) -> nn.Module:
    """The torch.nn RNNCell, LSTMCell or GRUCell of `cell`, holding its Parameter objects."""
    check(cell, plain_class)
    kwargs = {"nonlinearity": cell.nonlinearity} if cell.mode.startswith("RNN") else {}
    twin = CELLS[cell.mode](cell.input_size, cell.hidden_size, bias=cell.bias, device="meta", **kwargs)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(twin, name, getattr(cell, name))
    return twin.train(cell.training)
