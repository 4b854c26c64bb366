"""The options of rnnkit.LSTM, GRU and RNN that torch.nn does not have (see rnnkit.nn.variants).

Checked at construction; at each call they either leave torch.nn's cell in place (eval mode with
regularisers only; DropConnect alone, which only changes W_hh) or select the lstm_plus / gru_plus
engine family, and build that family's operator arguments here.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engines import variant_ops

LN_EPS = 1e-5  # torch.nn.LayerNorm's


def empty(like: Tensor) -> Tensor:
    """An absent parameter or mask at the operator boundary."""
    return like.new_empty(0)


OPTIONS_FAMILY = {"LSTM": "lstm_plus", "GRU": "gru_plus"}
OPTIONS_BY_MODE = {"LSTM": ("layer_norm", "peephole", "zoneout", "recurrent_dropout", "weight_drop"),
                   "GRU": ("layer_norm", "zoneout", "recurrent_dropout", "weight_drop"),
                   "RNN_TANH": ("weight_drop",), "RNN_RELU": ("weight_drop",)}


def check(name: str, mode: str, proj_size: int, options: dict) -> tuple[float, float]:
    """Validate the options torch.nn lacks; returns the zoneout probabilities (of h, of c)."""
    allowed = OPTIONS_BY_MODE.get(mode, ())
    for key, value in options.items():
        default = False if key in ("layer_norm", "peephole") else 0.0
        if key not in allowed and value != default:
            raise ValueError(f"{name}: {key} is not an option of this layer (options beyond torch.nn: "
                             f"{', '.join(allowed)})")
    for key in ("layer_norm", "peephole"):
        if not isinstance(options[key], bool):
            raise TypeError(f"{name}: {key} should be a bool, got {type(options[key]).__name__}")
    zoneout = options["zoneout"]
    pair = tuple(zoneout) if isinstance(zoneout, (tuple, list)) else (zoneout, zoneout)
    if len(pair) != 2 or (mode != "LSTM" and isinstance(zoneout, (tuple, list))):
        raise ValueError(f"{name}: zoneout should be a probability" + (" or a pair (for h, for c)"
                         if mode == "LSTM" else "") + f", got {zoneout!r}")
    for key, value in (("zoneout", pair[0]), ("zoneout", pair[1]), ("recurrent_dropout",
                       options["recurrent_dropout"]), ("weight_drop", options["weight_drop"])):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value < 1:
            raise ValueError(f"{name}: {key} should be a probability in [0, 1), got {value!r}")
    if proj_size and any(options[k] for k in ("layer_norm", "peephole", "zoneout", "recurrent_dropout")):
        raise ValueError(f"{name}: proj_size cannot be combined with layer_norm, peephole, zoneout or "
                         f"recurrent_dropout (only weight_drop)")
    return float(pair[0]), float(pair[1])


def family(layer) -> str | None:
    """lstm_plus or gru_plus when this call needs a cell torch.nn does not have; None for torch.nn's cell."""
    structural = layer.layer_norm or layer.peephole
    regularised = layer.training and (layer.zoneout_h > 0 or layer.zoneout_c > 0 or layer.recurrent_dropout > 0)
    return OPTIONS_FAMILY.get(layer.mode) if structural or regularised else None


def parameter_shapes(layer) -> dict[str, tuple[int, ...]]:
    hidden, shapes = layer.hidden_size, {}
    if layer.layer_norm:
        gates = GATE_COUNT[layer.mode] * hidden
        shapes.update(ln_ih_weight=(gates,), ln_ih_bias=(gates,), ln_hh_weight=(gates,), ln_hh_bias=(gates,))
        if layer.mode == "LSTM":
            shapes.update(ln_cell_weight=(hidden,), ln_cell_bias=(hidden,))
    if layer.peephole:
        shapes["weight_peephole"] = (3 * hidden,)  # [p_i, p_f, p_o]
    return shapes


GATE_COUNT = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def dropped(layer, w_hh: Tensor) -> Tensor:
    """W_hh with DropConnect: one mask per forward pass, drawn here per layer and direction."""
    if layer.weight_drop > 0 and layer.training:
        return F.dropout(w_hh, layer.weight_drop, training=True)
    return w_hh


def recurrence(layer, index: int, direction: int, x: Tensor, rows):
    """(config, xp, params, masks) of rnnkit.engines.lstm_plus / gru_plus for one layer and direction."""
    suffix = f"_l{index}" + ("_reverse" if direction else "")
    w_ih, w_hh, b_ih, b_hh, _ = layer.direction_weights(index, direction)
    ln = {k: getattr(layer, f"ln_{k}{suffix}", None) for k in ("ih_weight", "ih_bias", "hh_weight", "hh_bias",
                                                                 "cell_weight", "cell_bias")}
    words = ["bias"] if b_hh is not None else []
    xp = variant_ops.input_projection(x, w_ih)  # (N, G*H)
    if layer.layer_norm:
        words.append("ln")
        xp = F.layer_norm(xp, (xp.shape[1],), ln["ih_weight"], ln["ih_bias"], LN_EPS)
    if b_ih is not None:
        xp = xp + b_ih
    params = [dropped(layer, w_hh), b_hh if b_hh is not None else empty(x), ln["hh_weight"], ln["hh_bias"]]
    params = [empty(x) if p is None else p for p in params]
    if layer.mode == "LSTM":
        params += [empty(x) if ln[k] is None else ln[k] for k in ("cell_weight", "cell_bias")]
        peephole = getattr(layer, f"weight_peephole{suffix}", None)
        params.append(empty(x) if peephole is None else peephole)
        if peephole is not None:
            words.append("peephole")
    masks = draw_masks(layer, x, rows, words)  # adds the words of the masks it draws
    return ",".join(words), xp, params, masks


def draw_masks(layer, x: Tensor, rows, words: list[str]) -> list[Tensor]:
    """[recurrent dropout (B, H), zoneout of h (N, H)(, zoneout of c (N, H))]; empty where off. Appends the
    config words of those that are on."""
    n, hidden, batch = x.shape[0], layer.hidden_size, rows.batch
    ones = dict(dtype=x.dtype, device=x.device)
    masks = [empty(x), empty(x)] + ([empty(x)] if layer.mode == "LSTM" else [])
    if not layer.training:
        return masks
    if layer.recurrent_dropout > 0:
        words.append("rdrop")
        masks[0] = F.dropout(torch.ones(batch, hidden, **ones), layer.recurrent_dropout, training=True)
    for k, (word, p) in enumerate((("zoneout_h", layer.zoneout_h), ("zoneout_c", layer.zoneout_c))[:len(masks) - 1]):
        if p > 0:
            words.append(word)
            masks[1 + k] = torch.bernoulli(torch.full((n, hidden), p, **ones))  # 1: the unit keeps its value
    return masks
