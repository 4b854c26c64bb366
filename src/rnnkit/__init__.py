"""rnnkit: RNN, LSTM and GRU with hand-derived backpropagation through time.

Drop-ins for torch.nn.RNN/LSTM/GRU and their cells: same arguments, shapes, state_dict
keys and numbers. Layout: rnnkit.cells (step math) -> rnnkit.engines (time loop, BPTT)
-> rnnkit.nn (layers).

The names below are imported on first use (PEP 562), so `import rnnkit` and the command line's
`--help` do not wait for torch to load. The engines' PyTorch operators (torch.ops.rnnkit.*) exist once
rnnkit.engines is imported: by the first layer built, by `import rnnkit.engines`, or here when torch
is already loaded, which is what loading a saved torch.export program needs.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"
__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "MinGRU", "MinLSTM", "SLSTM", "engines"]

_FROM_NN = {"RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "MinGRU", "MinLSTM", "SLSTM"}


def __getattr__(name: str):
    if name in _FROM_NN:
        value = getattr(importlib.import_module(".nn", __name__), name)
    elif name == "engines":
        value = importlib.import_module(".engines", __name__)
    else:
        raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if "torch" in sys.modules:  # torch's import cost is paid already: register the operators now
    importlib.import_module(".engines", __name__)
