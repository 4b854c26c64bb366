"""Layers and cells with torch.nn's API, running on rnnkit's engines."""

from .cells import GRUCell, LSTMCell, RNNCell
from .layers import GRU, LSTM, RNN
from .minimal import MinGRU, MinLSTM
from .slstm import SLSTM
from .stream import Stream

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "Stream", "MinGRU", "MinLSTM", "SLSTM"]
