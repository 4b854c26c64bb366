"""The Triton engine against the reference engine, its kernels run by Triton's interpreter on CPU tensors.

TRITON_INTERPRET=1 must be set before Triton decorates any kernel, its own library's included,
which happens when triton is first imported, and other test modules import it early (torch._dynamo
does). The repository's conftest.py therefore sets it for the whole pytest process (it only changes
how Triton kernels run, and no other test runs one); this module sets it too, for runs without that
conftest, and skips if the kernels were decorated for the GPU anyway (TRITON_INTERPRET=0).

What the interpreter cannot show:
- The persistent strategy runs with a grid of one program here. The interpreter runs programs one
  after another, so a grid-wide barrier with several programs would wait forever. The barrier's
  arithmetic and the kernel's step loop are tested; several programs meeting at it are not.
- Speed, and anything only a GPU decides (memory ordering between programs, register pressure).
  test_kernels_compile_for_h100 compiles every kernel variant for sm_90 to catch what only the
  compiler rejects; benchmarks/gpu.py checks and times the engine on a GPU.

Every buffer a kernel writes starts as NaN, so an element a kernel forgets to write fails.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported (see above)

import importlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import rnnkit  # noqa: E402
from rnnkit.engines import reference  # noqa: E402
from rnnkit.engines import triton as tri  # noqa: E402
from rnnkit.testing import assert_close  # noqa: E402

_kernels = importlib.import_module("rnnkit.engines.triton_kernels")
if not _kernels.INTERPRETED and os.environ.get("TRITON_INTERPRET") == "1":
    _kernels = importlib.reload(_kernels)  # imported earlier in this process, before TRITON_INTERPRET was set
if not _kernels.INTERPRETED:
    pytest.skip("the Triton kernels were decorated for the GPU (TRITON_INTERPRET is not 1)", allow_module_level=True)


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Kernel output buffers start as NaN, so an element a kernel forgets to write fails the comparison."""
    monkeypatch.setattr(tri, "empty", lambda like, *shape, dtype=None:
                        torch.full(shape, float("nan"), dtype=dtype or like.dtype))


MODES = {"rnn_tanh": ("RNN_TANH", 1), "rnn_relu": ("RNN_RELU", 1), "lstm": ("LSTM", 4), "lstm_proj": ("LSTM", 4),
         "gru": ("GRU", 3)}
PACKINGS = {
    "T1": (3,),
    "padded_T5": (4,) * 5,
    "packed_unsorted_T6": (4, 4, 3, 2, 1, 1),  # what pack_padded_sequence makes of lengths like [6, 2, 4, 1]
}
SIZES = {"I5-H7": (5, 7), "I3-H33": (3, 33)}  # odd; 33 is not a multiple of the 16- and 32-wide column tiles
PROJ = 5  # the LSTM projection size of lstm_proj


def layer_inputs(family, batch_sizes, inp, hidden, dtype=torch.float32, bias=True, w_scale=0.5):
    """x, h0, c0 and (w_ih, w_hh, b_ih, b_hh, w_hr), all leaves that require grad."""
    torch.manual_seed(0)
    _, gates = MODES[family]
    out_size = PROJ if family == "lstm_proj" else hidden

    def mk(*shape, scale=0.5):
        return (torch.randn(*shape) * scale).to(dtype).requires_grad_()

    b = batch_sizes[0]
    x, h0 = mk(sum(batch_sizes), inp), mk(b, out_size)
    c0 = mk(b, hidden) if family.startswith("lstm") else None
    w = (mk(gates * hidden, inp, scale=w_scale), mk(gates * hidden, out_size, scale=w_scale),
         mk(gates * hidden, scale=w_scale) if bias else None, mk(gates * hidden, scale=w_scale) if bias else None,
         mk(out_size, hidden, scale=w_scale) if family == "lstm_proj" else None)
    return x, h0, c0, w


def run_both(family, batch_sizes, inp, hidden, reverse, dtype=torch.float32, bias=True, reference_dtype=None,
             w_scale=0.5):
    """Outputs and gradients (random upstream, never a sum) of the Triton and the reference engine.

    reference_dtype: run the reference engine on the same values in this dtype (float64 for 16-bit inputs).
    """
    x, h0, c0, w = layer_inputs(family, batch_sizes, inp, hidden, dtype, bias, w_scale)
    leaves = [t for t in (x, h0, c0, *w) if t is not None]
    mode = MODES[family][0]
    fast = [t for t in tri.run_layer(mode, x, batch_sizes, h0, c0, *w, reverse) if t is not None]
    ref_leaves = [t.detach().to(reference_dtype or dtype).requires_grad_() for t in leaves]
    it = iter(ref_leaves)
    rx, rh0, rc0 = next(it), next(it), next(it) if c0 is not None else None
    rw = [next(it) if t is not None else None for t in w]
    slow = [t for t in reference.run_layer(mode, rx, batch_sizes, rh0, rc0, *rw, reverse) if t is not None]
    gen = torch.Generator().manual_seed(1)
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in slow]
    fast_grads = torch.autograd.grad(fast, leaves, [u.to(dtype) for u in upstream])
    slow_grads = torch.autograd.grad(slow, ref_leaves, [u.to(slow[0].dtype) for u in upstream])
    return fast, slow, fast_grads, slow_grads


def assert_same(fast, slow, fast_grads, slow_grads):
    dtype = fast[0].dtype
    for name, a, b in zip(["out", "h_n", "c_n"], fast, slow, strict=False):
        assert_close(a, b.to(dtype), "output", name)
    for k, (a, b) in enumerate(zip(fast_grads, slow_grads, strict=True)):
        assert_close(a, b.to(dtype), "grad", f"gradient of leaf {k}")


# stepwise runs 16x32 tiles (H=33 spans two column tiles, the second mostly masked); persistent runs one
# program covering everything (the interpreter's limit, see the module docstring), so one size suffices there
SIZE_STRATEGIES = [("I5-H7", "stepwise"), ("I3-H33", "stepwise"), ("I3-H33", "persistent")]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(("size", "strategy"), SIZE_STRATEGIES, ids=[f"{a}-{b}" for a, b in SIZE_STRATEGIES])
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("family", MODES)
def test_triton_engine_matches_reference(family, packing, size, strategy, reverse, monkeypatch):
    monkeypatch.setattr(tri, "STRATEGY", strategy)
    assert_same(*run_both(family, PACKINGS[packing], *SIZES[size], reverse))


@pytest.mark.parametrize("strategy", ["stepwise", "persistent"])
@pytest.mark.parametrize("family", MODES)
def test_no_bias(family, strategy, monkeypatch):
    monkeypatch.setattr(tri, "STRATEGY", strategy)
    assert_same(*run_both(family, PACKINGS["packed_unsorted_T6"], 3, 33, False, bias=False))


@pytest.mark.parametrize("family", MODES)
def test_several_row_tiles(family, monkeypatch):
    """20 sequences (two 16-row tiles) with lengths spread so the second tile finishes early and is skipped."""
    monkeypatch.setattr(tri, "STRATEGY", "stepwise")
    assert_same(*run_both(family, (20, 20, 17, 9, 3), 4, 18, True))


@pytest.mark.parametrize("family", ["lstm", "lstm_proj"])
def test_persistent_lstm_reads_w_hh_every_step(family, monkeypatch):
    """The persistent LSTM forward keeps W_hh in registers when it fits; this covers the other branch."""
    monkeypatch.setattr(tri, "STRATEGY", "persistent")
    monkeypatch.setattr(tri, "RESIDENT_MAX_BYTES", 0)
    assert tri.make_plan(4, 33, 33, torch.zeros(1), keep_w=True).w_resident is False
    assert_same(*run_both(family, PACKINGS["packed_unsorted_T6"], 3, 33, True))


@pytest.mark.parametrize("strategy", ["stepwise", "persistent"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("family", MODES)
def test_half_precision_against_float64(family, dtype, strategy, monkeypatch):
    """16-bit inputs against the reference engine in float64 on the same values (the tolerance table's
    bf16/fp16 rows): the engine accumulates in float32 and keeps its cell state and activations in float32."""
    monkeypatch.setattr(tri, "STRATEGY", strategy)
    # torch.nn's weight scale, 1/sqrt(H): with larger weights the RNN's recurrence amplifies rounding errors
    assert_same(*run_both(family, PACKINGS["packed_unsorted_T6"], 5, 33, False, dtype, reference_dtype=torch.float64,
                          w_scale=33 ** -0.5))


@pytest.mark.parametrize("strategy", ["stepwise", "persistent"])
def test_layer_end_to_end(strategy, monkeypatch):
    """rnnkit.LSTM(engine="triton"): two bidirectional layers with a projection on an unsorted packed batch."""
    monkeypatch.setattr(tri, "STRATEGY", strategy)
    torch.manual_seed(0)
    kit = rnnkit.LSTM(3, 17, num_layers=2, bidirectional=True, proj_size=4, engine="triton")
    ref = rnnkit.LSTM(3, 17, num_layers=2, bidirectional=True, proj_size=4, engine="reference")
    ref.load_state_dict(kit.state_dict())
    x = torch.randn(5, 3, 3)
    packed = pack_padded_sequence(x, torch.tensor([3, 5, 1]), enforce_sorted=False)
    results = []
    for module in (kit, ref):
        out, (h, c) = module(packed)
        grads = torch.autograd.grad([out.data, h, c], list(module.parameters()),
                                    [torch.ones_like(out.data) * 0.3, torch.full_like(h, -0.2), torch.full_like(c, 0.1)])
        results.append([out.data, h, c, *grads])
    for k, (a, b) in enumerate(zip(*results, strict=True)):
        assert_close(a, b, "output" if k < 3 else "grad", f"result {k}")


def test_why_not_and_selection():
    x = torch.zeros(2, 3)
    assert tri.why_not(x) is None  # CPU tensors run under the interpreter
    assert "float32, bfloat16 and float16" in tri.why_not(x.double())
    assert "CUDA tensor" in tri.why_not(torch.zeros(2, device="meta"))
    assert rnnkit.engines.select("triton", x) is tri.run_layer
    assert rnnkit.engines.select("auto", x) is not tri.run_layer  # auto gives CPU tensors to the CPU engines
    with pytest.raises(RuntimeError, match=r"engine 'triton' cannot run here: it supports float32, bfloat16"):
        rnnkit.GRU(2, 3, engine="triton", dtype=torch.float64)(torch.zeros(4, 1, 2, dtype=torch.float64))


def test_strategy_heuristic():
    cuda = torch.device("cuda")
    assert tri.choose_strategy(16, 512, torch.device("cpu"), torch.float32) == "stepwise"  # "auto" under the interpreter
    assert tri.persistent_block_h(16, 1024, 132) == 16  # 1 x 64 programs
    assert tri.persistent_block_h(64, 1024, 132) == 32  # 4 x 32 programs
    assert tri.persistent_block_h(512, 1024, 132) is None  # 32 row tiles x 8 column tiles of 128 > 132
    if torch.cuda.is_available():
        assert tri.choose_strategy(512, 1024, cuda, torch.bfloat16) == "stepwise"  # no persistent grid fits
        assert tri.choose_strategy(1, 256, cuda, torch.bfloat16) == "persistent"
        assert tri.choose_strategy(1, 256, cuda, torch.float32) == "stepwise"
    assert tri.persistent_block_k(128, 2) == 64  # 16 KB of W per step of the K loop
    assert tri.persistent_block_k(16, 2) == 128 and tri.persistent_block_k(16, 4) == 64


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # numpy, inside the interpreter
def test_no_nan_from_saturated_activations(monkeypatch):
    """exp overflows to inf for large pre-activations; sigmoid and tanh built from it must still give 0, 1, -1."""
    monkeypatch.setattr(tri, "STRATEGY", "stepwise")
    x = torch.tensor([[200.0], [-200.0], [0.0]])
    w_ih = torch.ones(4, 1)
    out, h_n, c_n = tri.run_layer("LSTM", x, (1, 1, 1), torch.zeros(1, 1), torch.zeros(1, 1), w_ih, torch.zeros(4, 1),
                                  None, None, None, False)
    ref = reference.run_layer("LSTM", x, (1, 1, 1), torch.zeros(1, 1), torch.zeros(1, 1), w_ih, torch.zeros(4, 1),
                              None, None, None, False)
    assert torch.isfinite(out).all()
    assert_close(out, ref[0], "output", "out")


@pytest.mark.skipif(shutil.which("ptxas") is None and not list(
    Path(sys.modules["triton"].__file__).parent.glob("backends/nvidia/bin/ptxas*")), reason="no ptxas to compile with")
def test_kernels_compile_for_h100():
    """Every kernel variant the engine launches compiles for sm_90 (fresh process: no interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    script = Path(__file__).with_name("compile_triton_kernels.py")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiled" in result.stdout
