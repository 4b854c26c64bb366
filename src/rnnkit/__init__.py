"""rnnkit: RNN, LSTM and GRU with hand-derived backpropagation through time.

Drop-ins for torch.nn.RNN/LSTM/GRU and their cells: same arguments, shapes, state_dict
keys and numbers. Layout: rnnkit.cells (step math) -> rnnkit.engines (time loop, BPTT)
-> rnnkit.nn (layers).
"""

from . import engines
from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"
__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "engines"]
