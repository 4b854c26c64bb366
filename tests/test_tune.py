"""engine="auto" on CPU: the per-machine choice between the CPU engine and torch's fused LSTM (engines/tune.py).

Failure modes of the cache (unwritable folder, corrupt file, another machine's file, two processes
calibrating at once), where timing must never run (torch.compile, torch.func), and that the results do
not depend on which engine was picked beyond the float tolerance. Speed is benchmarks/cpu.py's business.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkit
from rnnkit.engines import aten, tune
from rnnkit.testing import assert_close

pytestmark = pytest.mark.skipif(aten.why_not(torch.zeros(1)) is not None, reason="this torch build has no oneDNN")


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RNNKIT_TUNE", raising=False)
    tune.forget()
    yield tmp_path / "cache"
    tune.forget()


def lstm_pair(hidden=5):
    torch.manual_seed(0)
    auto, ref = rnnkit.LSTM(3, hidden), rnnkit.LSTM(3, hidden, engine="reference")
    ref.load_state_dict(auto.state_dict())
    return auto, ref


def check_against_reference(auto, ref, x):
    """Outputs and every gradient of the auto layer equal the reference engine's."""
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    (a, (ha, ca)), (r, (hr, cr)) = auto(xa), ref(xr)
    for p, q in ((a, r), (ha, hr), (ca, cr)):
        assert_close(p, q, "output", "auto output")
    up = torch.randn_like(a)
    for k, (p, q) in enumerate(zip(torch.autograd.grad(a, [xa, *auto.parameters()], up),
                                   torch.autograd.grad(r, [xr, *ref.parameters()], up), strict=True)):
        assert_close(p, q, "grad", f"auto gradient {k}")


def entries(path: Path) -> dict:
    return json.loads(path.read_text())["entries"]


def test_first_call_calibrates_and_writes_the_cache(own_cache):
    auto, ref = lstm_pair()
    check_against_reference(auto, ref, torch.randn(6, 2, 3))
    written = entries(tune.cache_path())
    assert tune.cache_path().parent == own_cache
    # first the whole stack against torch.lstm; where rnnkit's stack won, its layers' own engine choice too
    stacks = [k for k in written if k.startswith("stack|")]
    layers = [k for k in written if not k.startswith("stack|")]
    assert [k.split("|")[:3] for k in stacks] == [["stack", "LSTM", "train"]]
    assert [k.split("|")[:2] for k in layers] == ([] if written[stacks[0]]["engine"] == "aten" else [["LSTM", "train"]])
    assert all(v["engine"] in ("cpu", "aten") for v in written.values())


def test_a_later_process_reads_the_choice_instead_of_timing(own_cache, monkeypatch):
    auto, ref = lstm_pair()
    check_against_reference(auto, ref, torch.randn(6, 2, 3))
    tune.forget()  # as a new process: the file is all it knows
    monkeypatch.setattr(tune, "calibrate", lambda *a, **k: pytest.fail("calibrated again despite the cache"))
    check_against_reference(auto, ref, torch.randn(6, 2, 3))


@pytest.mark.parametrize("engine", ["cpu", "aten"])
@pytest.mark.parametrize("grad", [True, False], ids=["train", "infer"])
def test_results_do_not_depend_on_the_choice(engine, grad, monkeypatch):
    monkeypatch.setattr(tune, "calibrate", lambda *a, **k: {"engine": engine})
    monkeypatch.setattr(tune, "time_stacks", lambda *a, **k: {"engine": "cpu"})  # the per-layer choice decides
    auto, ref = lstm_pair()
    x = torch.randn(7, 3, 3)
    if grad:
        check_against_reference(auto, ref, x)
    else:
        with torch.no_grad():
            (a, (ha, ca)), (r, (hr, cr)) = auto(x), ref(x)
        for p, q in ((a, r), (ha, hr), (ca, cr)):
            assert_close(p, q, "output", "auto output without grad")
    assert {v["engine"] for k, v in tune.table().items() if not k.startswith("stack|")} == {engine}


def test_unwritable_cache_folder_still_gives_correct_results(monkeypatch, tmp_path, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(blocker / "cache"))  # mkdir fails: its parent is a file
    tune.forget()
    auto, ref = lstm_pair()
    check_against_reference(auto, ref, torch.randn(6, 2, 3))
    table = tune.table()  # kept in this process: the stack's timing, and its layer's where rnnkit's stack won
    stacks = [k for k in table if k.startswith("stack|")]
    assert len(stacks) == 1 and len(table) == (1 if table[stacks[0]]["engine"] == "aten" else 2), table
    assert capfd.readouterr().err == ""


def test_corrupt_cache_file_counts_as_empty_and_is_replaced(own_cache):
    own_cache.mkdir(parents=True)
    tune.cache_path().write_text('{"format": 1, "machine": {"cpu": tru')  # a torn write from elsewhere
    auto, ref = lstm_pair()
    check_against_reference(auto, ref, torch.randn(6, 2, 3))
    assert any(k.startswith("stack|LSTM|train") for k in entries(tune.cache_path()))


@pytest.mark.parametrize("payload", [
    {"format": 1, "machine": "another machine", "entries": {}},
    {"format": 999, "entries": {}},
    [1, 2, 3],
    "just a string",
])
def test_foreign_or_malformed_cache_files_are_ignored(own_cache, payload):
    own_cache.mkdir(parents=True)
    tune.cache_path().write_text(json.dumps(payload))
    assert tune.read_file(tune.cache_path()) == {}


def test_entries_naming_unknown_engines_are_ignored(own_cache):
    own_cache.mkdir(parents=True)
    good = {"engine": "aten"}
    tune.cache_path().write_text(json.dumps({"format": tune.FORMAT, "machine": tune.machine_key(),
                                             "entries": {"a": {"engine": "warp-drive"}, "b": 3, "c": good}}))
    assert tune.read_file(tune.cache_path()) == {"c": good}


CHILD = """
import json, sys, torch, rnnkit
from rnnkit.engines import tune
from rnnkit.testing import assert_close
torch.manual_seed(0)
auto, ref = rnnkit.LSTM(3, 6), rnnkit.LSTM(3, 6, engine="reference")
ref.load_state_dict(auto.state_dict())
x = torch.randn(9, 2, 3, requires_grad=True)
a, _ = auto(x); r, _ = ref(x)
assert_close(a, r, "output", "child output")
g = torch.randn_like(a)
for p, q in zip(torch.autograd.grad(a, [x, *auto.parameters()], g), torch.autograd.grad(r, [x, *ref.parameters()], g)):
    assert_close(p, q, "grad", "child gradient")
print(json.dumps(sorted(tune.table())))
"""


def test_two_processes_calibrating_at_once_both_get_correct_results(own_cache):
    env = {**os.environ, "RNNKIT_CACHE_DIR": str(own_cache)}
    children = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [c.communicate(timeout=300) for c in children]
    for child, (out, err) in zip(children, results, strict=True):
        assert child.returncode == 0, err
    keys = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert keys[0] == keys[1] and any(k.startswith("stack|LSTM|train") for k in keys[0])
    assert set(entries(tune.cache_path())) == set(keys[0])  # one valid file, whichever rename came last
    assert not [p for p in own_cache.iterdir() if p.name.endswith(".tmp")]


def test_no_timing_under_torch_func_or_with_tuning_off(monkeypatch):
    monkeypatch.setattr(tune, "calibrate", lambda *a, **k: pytest.fail("calibrated where it must not"))
    auto, _ = lstm_pair()
    params = dict(auto.named_parameters())
    x = torch.randn(4, 2, 3)
    grads = torch.func.grad(lambda p: torch.func.functional_call(auto, p, (x,))[0].sum())(params)
    assert set(grads) == set(params)
    monkeypatch.setenv("RNNKIT_TUNE", "0")
    auto(torch.randn(4, 2, 3, requires_grad=True))[0].sum().backward()
    assert tune.table() == {}


def test_no_timing_while_torch_compile_traces(monkeypatch):
    monkeypatch.setattr(tune, "calibrate", lambda *a, **k: pytest.fail("calibrated while tracing"))
    auto, ref = lstm_pair()
    compiled = torch.compile(auto, backend="eager", fullgraph=True)
    x = torch.randn(4, 2, 3)
    out, _ = compiled(x)
    assert_close(out, ref(x)[0], "output", "compiled output")


def test_other_cells_and_packed_batches_never_time(monkeypatch):
    monkeypatch.setattr(tune, "calibrate", lambda *a, **k: pytest.fail("nothing to choose between here"))
    rnnkit.GRU(3, 4)(torch.randn(5, 2, 3))
    rnnkit.LSTM(3, 4, proj_size=2)(torch.randn(5, 2, 3))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    rnnkit.LSTM(3, 4)(packed)
    rnnkit.LSTM(3, 4, dtype=torch.float64)(torch.randn(5, 2, 3, dtype=torch.float64))


@pytest.mark.parametrize("engine", ["auto", "cpu", "aten"])
def test_backward_with_an_empty_batch_prints_nothing(engine, capfd):
    lstm = rnnkit.LSTM(3, 4, engine=engine)
    x = torch.randn(5, 0, 3, requires_grad=True)
    out, (h, c) = lstm(x)
    (out.sum() + h.sum() + c.sum()).backward()
    assert x.grad.shape == x.shape
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("train", [False, True], ids=["inference", "train"])
def test_timing_leaves_the_random_stream_alone(own_cache, train):
    """A seeded run draws the same numbers whether or not its first call timed the candidates."""
    auto, _ = lstm_pair()
    x = torch.randn(6, 2, 3, requires_grad=train)
    draws, timed = [], []
    for _ in range(2):  # the first pass times and caches; the second reads the cache
        torch.manual_seed(1)
        with torch.set_grad_enabled(train):
            auto(x)
        draws.append(torch.rand(4))
        timed.append(len(entries(next(own_cache.glob("*.json")))))
    # the first pass did time: the whole stack, and each layer too where rnnkit's stack won (which one wins this
    # tiny call depends on the machine); the second timed nothing more
    assert timed[0] in (1, 2) and timed[1] == timed[0], timed
    assert torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("layout", ["one_layer", "two_layers_bidirectional_dropout", "batch_first_no_bias"])
def test_a_stack_aten_won_runs_as_torch_nn_runs_it(layout, monkeypatch):
    """Once oneDNN won every layer's timing, the layer runs the whole stack in one torch.lstm call, as
    torch.nn.LSTM does: the same numbers as torch.nn, gradients and double backward included."""
    monkeypatch.setattr(tune, "calibrate", lambda *a, **k: {"engine": "aten"})
    monkeypatch.setattr(tune, "time_stacks", lambda *a, **k: {"engine": "cpu"})  # the per-layer timing decides
    kw = {"one_layer": {}, "two_layers_bidirectional_dropout": dict(num_layers=2, bidirectional=True, dropout=0.3),
          "batch_first_no_bias": dict(batch_first=True, bias=False)}[layout]
    torch.manual_seed(0)
    auto, plain = rnnkit.LSTM(3, 5, **kw), torch.nn.LSTM(3, 5, **kw)
    plain.load_state_dict(auto.state_dict())
    x = torch.randn(6, 4, 3, requires_grad=True)
    auto(x)  # the first call times (here: is told) every layer's class; the next takes the whole-stack path
    calls = []
    real = aten.torch_stack  # what the general path (aten.run_stack) and the quick lane call
    monkeypatch.setattr(aten, "torch_stack", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(1)
    (a, (ha, ca)) = auto(x)
    torch.manual_seed(1)
    (p, (hp, cp)) = plain(x)
    assert calls == [1]
    for u, v in ((a, p), (ha, hp), (ca, cp)):
        assert torch.equal(u, v)
    up = torch.randn_like(a)
    for u, v in zip(torch.autograd.grad(a, [x, *auto.parameters()], up, create_graph=True),
                    torch.autograd.grad(p, [x, *plain.parameters()], up, create_graph=True), strict=True):
        assert torch.equal(u, v)
    with torch.no_grad():  # inference is its own shape class: timed first, then the same path
        auto(x), auto(x)
    assert calls == [1, 1]


def test_the_whole_stack_path_is_not_taken_where_it_cannot_run(monkeypatch):
    monkeypatch.setattr(tune, "calibrate", lambda *a, **k: {"engine": "aten"})
    monkeypatch.setattr(aten, "torch_stack", lambda *a, **k: pytest.fail("whole-stack path taken"))
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(3, 5)
    x = torch.randn(6, 4, 3)
    for _ in range(2):
        lstm(x, lengths=torch.tensor([6, 5, 6, 2]))  # packed: sequences of different lengths
    with rnnkit.engines.use("cpu"):
        lstm(x)
    projected = rnnkit.LSTM(3, 5, proj_size=2)
    projected(x), projected(x)
    lstm.double()(x.double())
    lstm.float()
    monkeypatch.setenv("RNNKIT_TUNE", "0")
    lstm(x)
    gru = rnnkit.GRU(3, 5)
    gru(x), gru(x)


@pytest.mark.parametrize("full_budget_s, timed_whole", [(10.0, True), (0.0, False)], ids=["short_call", "long_call"])
def test_a_short_call_is_timed_whole_not_extrapolated(own_cache, monkeypatch, full_budget_s, timed_whole):
    """Beyond CAL_STEPS steps a call predicted cheap is timed as it is: costs that change with N (library switches
    in the products over all steps) make the line through short slices wrong there."""
    monkeypatch.setattr(tune, "CAL_FULL_S", full_budget_s)
    seen = []
    real = tune.time_whole_calls

    def spy(runs):
        seen.append(sorted(runs))
        return real(runs)

    monkeypatch.setattr(tune, "time_whole_calls", spy)
    monkeypatch.setattr(tune, "time_stacks", lambda *a, **k: {"engine": "cpu"})  # so that the layers' timing runs
    auto, ref = lstm_pair()
    check_against_reference(auto, ref, torch.randn(tune.CAL_STEPS + 5, 2, 3))
    assert seen == ([["aten", "cpu"]] if timed_whole else [])
    entry = next(v for k, v in entries(tune.cache_path()).items() if not k.startswith("stack|"))
    assert entry["engine"] in ("cpu", "aten") and set(entry["predicted_ms"]) == {"cpu", "aten"}


GRU_RNN = {"gru": ("GRU", {}), "rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
           "gru_2layers_bidir": ("GRU", {"num_layers": 2, "bidirectional": True})}


@pytest.mark.parametrize("strategy", ["cpu", "aten"])
@pytest.mark.parametrize("grad", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("case", GRU_RNN)
def test_gru_and_rnn_stack_choice_gives_the_same_results(case, grad, strategy, monkeypatch):
    """Either choice of the whole-stack timing gives the reference engine's numbers; "aten" runs torch's own
    stack (torch.gru, torch.rnn_*), which then gives torch.nn's to the last bit."""
    monkeypatch.setattr(tune, "time_stacks", lambda runners, steps, ways=None: {"engine": strategy})
    calls = []
    real = aten.torch_stack  # what the general path (aten.run_stack) and the quick lane call
    monkeypatch.setattr(aten, "torch_stack", lambda *a, **k: calls.append(1) or real(*a, **k))
    name, kw = GRU_RNN[case]
    torch.manual_seed(0)
    auto, ref, theirs = (getattr(rnnkit, name)(3, 5, **kw), getattr(rnnkit, name)(3, 5, engine="reference", **kw),
                         getattr(torch.nn, name)(3, 5, **kw))
    ref.load_state_dict(auto.state_dict())
    theirs.load_state_dict(auto.state_dict())
    x = torch.randn(4, 2, 3, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        outs = [m(x)[0] for m in (auto, ref, theirs)]
    assert_close(outs[0], outs[1], "output", "auto output")
    assert bool(calls) == (strategy == "aten")
    if strategy == "aten":
        assert torch.equal(outs[0], outs[2])
    if grad:
        up = torch.randn_like(outs[0])
        for p, q in zip(torch.autograd.grad(outs[0], [x, *auto.parameters()], up),
                        torch.autograd.grad(outs[1], [x, *ref.parameters()], up), strict=True):
            assert_close(p, q, "grad", "auto gradient")


def test_stack_timing_runs_once_per_class_and_leaves_the_random_stream_alone(own_cache, monkeypatch):
    seen = []
    real = tune.time_stacks
    monkeypatch.setattr(tune, "time_stacks", lambda runners, steps, ways=tune.STACK_WAYS[:2]: seen.append(steps)
                        or real(runners, steps, ways))
    gru = rnnkit.GRU(3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(3, 2, 3)
    torch.manual_seed(7)
    gru(x)
    after_first = torch.rand(1)
    torch.manual_seed(7)
    gru(x)
    assert torch.equal(torch.rand(1), after_first)  # the timed call drew exactly what the untimed one did
    assert seen == [3]
    assert any(k.startswith("stack|GRU|train|T4|B2|I3|H4") for k in entries(tune.cache_path()))


def test_large_calls_are_not_timed_as_a_whole_stack(own_cache, monkeypatch):
    """Above STACK_TIMING_MAX_MACS Python per call cannot matter: no whole-stack timing, rnnkit's engine runs."""
    from rnnkit.nn import layers

    monkeypatch.setattr(layers, "STACK_TIMING_MAX_MACS", 0)
    monkeypatch.setattr(tune, "time_stacks", lambda *a, **k: pytest.fail("a whole-stack timing ran"))
    monkeypatch.setattr(aten, "torch_stack", lambda *a, **k: pytest.fail("torch's stack ran"))
    gru, ref = rnnkit.GRU(3, 4), rnnkit.GRU(3, 4, engine="reference")
    ref.load_state_dict(gru.state_dict())
    x = torch.randn(5, 2, 3)
    assert_close(gru(x)[0], ref(x)[0], "output", "GRU output")


def test_no_timing_in_a_distributed_job(monkeypatch):
    """Ranks must run the same arithmetic: in a job of more than one process auto runs the CPU engine untimed."""
    monkeypatch.delenv("RNNKIT_TUNE", raising=False)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    assert not tune.enabled()
    monkeypatch.setattr(tune, "calibrate", lambda *a, **k: pytest.fail("timed in a distributed job"))
    monkeypatch.setattr(tune, "time_stacks", lambda *a, **k: pytest.fail("timed in a distributed job"))
    auto, ref = lstm_pair()
    check_against_reference(auto, ref, torch.randn(6, 2, 3))
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 1)
    assert tune.enabled()


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_nothing_is_timed_under_a_dispatch_mode(name, own_cache):
    """Under FlopCounterMode (or any dispatch mode) auto times nothing: the mode would count every timed run, and the
    timings would measure the mode. A choice timed before still applies there."""
    from torch.utils.flop_counter import FlopCounterMode

    layer = getattr(rnnkit, name)(3, 5, num_layers=2)
    x = torch.randn(6, 2, 3)
    with FlopCounterMode(display=False) as counter:
        layer(x)[0].sum().backward()
    assert tune.table() == {} and not list(own_cache.glob("*.json")), "nothing may be timed under the mode"
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert set(counts) == {"rnnkit.cpu_forward", "rnnkit.cpu_backward"}, counts
    with torch.no_grad():
        layer(x)  # outside the mode: timed now
    assert tune.table(), "the call outside the mode should have timed its shape class"


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_whole_stack_timing_of_a_batch_first_training_call(name, own_cache):
    """The whole-stack timing runs rnnkit's engine through the general path's own steps, in the layer's input form
    (batch_first here): the timed call and the call itself give torch.nn's numbers."""
    torch.manual_seed(0)
    ours, theirs = getattr(rnnkit, name)(3, 5, batch_first=True), getattr(torch.nn, name)(3, 5, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 6, 3, requires_grad=True)
    results = []
    for module in (ours, theirs):
        out = module(x)[0]
        results.append((out, *torch.autograd.grad(out, [x, *module.parameters()], torch.ones_like(out))))
    assert any(k.startswith("stack|") for k in tune.table()), "the call should have timed its whole stack"
    for a, b in zip(*results, strict=True):
        assert_close(a, b, "grad")


# ---------------------------------------------------------------- products over all steps (tune.faster_product)


def check_layer_against_reference(kit, ref, x):
    """Outputs and every gradient (input, initial state, each parameter) of kit equal ref's (GRU, RNN or LSTM)."""
    h0 = torch.randn(kit.num_layers, x.shape[1], kit.hidden_size)
    states = (h0, torch.randn_like(h0)) if isinstance(kit, rnnkit.LSTM) else h0
    runs = []
    for layer in (kit, ref):
        xs = x.clone().requires_grad_()
        s = tuple(t.clone().requires_grad_() for t in states) if isinstance(states, tuple) else states.clone().requires_grad_()
        out, _ = layer(xs, s)
        runs.append((out, [xs, *(s if isinstance(s, tuple) else (s,)), *layer.parameters()]))
    assert_close(runs[0][0], runs[1][0], "output", "output")
    up = torch.randn_like(runs[0][0])
    for k, (p, q) in enumerate(zip(*(torch.autograd.grad(out, wrt, up) for out, wrt in runs), strict=True)):
        assert_close(p, q, "grad", f"gradient {k}")


@pytest.mark.parametrize("library", tune.PRODUCTS)
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_products_in_either_library_give_the_reference_numbers(name, library, monkeypatch):
    """Whichever library a machine's timing picks for the products over all steps (the input projection, dx, the
    weight gradients), outputs and every gradient equal the reference engine's."""
    picked = []

    def forced(key, candidates, default):
        picked.append(key.split("|")[1])
        return candidates[library]()

    monkeypatch.setattr(tune, "faster_product", forced)
    torch.manual_seed(0)
    kit = getattr(rnnkit, name)(64, 64, engine="cpu")
    ref = getattr(rnnkit, name)(64, 64, engine="reference")
    ref.load_state_dict(kit.state_dict())
    check_layer_against_reference(kit, ref, torch.randn(70, 4, 64))  # 280 rows: every product is timed
    assert {"linearc", "lineart", "sum"} <= set(picked), picked


def sum_candidates(a, b, runs):
    """Two ways to form a^T b, counting their runs."""
    def run(name):
        runs[name] += 1
        return a.t() @ b if name == "mm" else (b.t() @ a).t().contiguous()
    return {name: (lambda name=name: run(name)) for name in tune.PRODUCTS}


def test_a_product_is_timed_once_per_machine_and_class(own_cache):
    a, b = torch.randn(300, 64), torch.randn(300, 256)
    key = tune.product_key("sum", 300, 64, 256)
    runs = dict.fromkeys(tune.PRODUCTS, 0)
    assert_close(tune.faster_product(key, sum_candidates(a, b, runs), "mm"), a.t() @ b, "grad", "timed product")
    assert min(runs.values()) >= 1 + tune.PRODUCT_ROUNDS[0], runs  # an untimed round, then the timed ones
    chosen = entries(tune.cache_path())[key]["product"]
    assert chosen in tune.PRODUCTS
    for forget in (False, True):  # this process, then a later one (reading the file)
        if forget:
            tune.forget()
        runs = dict.fromkeys(tune.PRODUCTS, 0)
        tune.faster_product(key, sum_candidates(a, b, runs), "mm")
        assert runs == {name: int(name == chosen) for name in tune.PRODUCTS}
    assert tune.product_key("sum", 257, 64, 256) == key != tune.product_key("sum", 600, 64, 256)


def test_a_product_is_not_timed_with_tuning_off_or_under_a_mode(own_cache, monkeypatch):
    a, b = torch.randn(300, 64), torch.randn(300, 256)
    key = tune.product_key("sum", 300, 64, 256)
    from torch.utils.flop_counter import FlopCounterMode
    for default in tune.PRODUCTS:
        runs = dict.fromkeys(tune.PRODUCTS, 0)
        with FlopCounterMode(display=False):
            tune.faster_product(key, sum_candidates(a, b, runs), default)
        monkeypatch.setenv("RNNKIT_TUNE", "0")
        tune.faster_product(key, sum_candidates(a, b, runs), default)
        monkeypatch.delenv("RNNKIT_TUNE")
        assert runs == {name: 2 * int(name == default) for name in tune.PRODUCTS}
    assert tune.table() == {}


def test_product_entries_naming_unknown_libraries_are_ignored(own_cache):
    own_cache.mkdir(parents=True)
    good = {"product": "mm"}
    tune.cache_path().write_text(json.dumps({"format": tune.FORMAT, "machine": tune.machine_key(), "entries": {
        "product|sum|N512|64|256|thr1": {"product": "warp-drive"},
        "product|sum|N512|64|64|thr1": {"engine": "cpu"},  # an engine entry under a product's key
        "LSTM|train|T8|B2|I3|H5|thr1": {"product": "mm"},  # and the other way round
        "product|sum|N512|64|128|thr1": good}}))
    assert tune.read_file(tune.cache_path()) == {"product|sum|N512|64|128|thr1": good}


CELL_CASES = {"lstm": ("LSTM", {}), "lstm_2layers": ("LSTM", {"num_layers": 2}), "gru": ("GRU", {}),
              "rnn_relu_2layers": ("RNN", {"nonlinearity": "relu", "num_layers": 2}),
              "gru_bidirectional": ("GRU", {"bidirectional": True})}


@pytest.mark.parametrize("steps", [1, 5], ids=["T1", "T5"])
@pytest.mark.parametrize("grad", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("case", CELL_CASES)
def test_torch_cells_way_gives_the_reference_numbers_and_is_replayed(case, grad, steps, monkeypatch):
    """Where the whole-stack timing picks torch's cell functions ("cells"), the layer runs them a step at a time,
    first from the general path, then from the quick lane (with grad mode on too), with the reference engine's
    outputs and gradients; a bidirectional stack, which they cannot run, gets torch's stack instead."""
    monkeypatch.setattr(tune, "time_stacks", lambda runners, steps, ways=("cpu", "aten"): {"engine": "cells"})
    runs = {"cells": 0, "stack": 0}
    real_cells, real_stack = aten.run_cells, aten.torch_stack
    monkeypatch.setattr(aten, "run_cells", lambda *a: runs.__setitem__("cells", runs["cells"] + 1) or real_cells(*a))
    monkeypatch.setattr(aten, "torch_stack", lambda *a: runs.__setitem__("stack", runs["stack"] + 1) or real_stack(*a))
    name, kw = CELL_CASES[case]
    torch.manual_seed(0)
    auto, ref = getattr(rnnkit, name)(3, 5, **kw), getattr(rnnkit, name)(3, 5, engine="reference", **kw)
    ref.load_state_dict(auto.state_dict())
    h0 = torch.randn(auto.num_layers * auto.num_directions, 2, 5)
    hx = (h0, torch.randn_like(h0)) if name == "LSTM" else h0
    for call in range(2):  # the second call replays the quick lane
        x = torch.randn(steps, 2, 3, requires_grad=grad)
        with torch.set_grad_enabled(grad):
            (out, h_n), (want, h_want) = auto(x, hx), ref(x, hx)
        assert_close(out, want, "output", f"call {call} output")
        for a, b in zip(h_n if name == "LSTM" else (h_n,), h_want if name == "LSTM" else (h_want,), strict=True):
            assert_close(a, b, "output", f"call {call} final state")
        if grad:
            up = torch.randn_like(out)
            for k, (p, q) in enumerate(zip(torch.autograd.grad(out, [x, *auto.parameters()], up),
                                           torch.autograd.grad(want, [x, *ref.parameters()], up), strict=True)):
                assert_close(p, q, "grad", f"call {call} gradient {k}")
    bidirectional = kw.get("bidirectional", False)
    assert runs == ({"cells": 0, "stack": 2} if bidirectional else {"cells": 2, "stack": 0}), runs


def test_the_stack_timing_offers_cells_to_one_direction_only(own_cache, monkeypatch):
    offered = []
    real = tune.time_stacks
    monkeypatch.setattr(tune, "time_stacks", lambda runners, steps, ways=("cpu", "aten"): offered.append(ways)
                        or real(runners, steps, ways))
    x = torch.randn(1, 1, 3, requires_grad=True)
    for bidirectional in (False, True):
        out, _ = rnnkit.LSTM(3, 4, bidirectional=bidirectional)(x)
        out.sum().backward()
    assert offered == [("cpu", "aten", "cells"), ("cpu", "aten")]
    table = tune.table()
    assert all(e["engine"] in tune.STACK_WAYS for k, e in table.items() if k.startswith("stack|")), table


@pytest.mark.parametrize("full_budget_s, timed_whole", [(0.03, True), (0.0, False)], ids=["cheap", "costly"])
def test_a_short_stack_is_timed_whole_for_the_close_strategies(monkeypatch, full_budget_s, timed_whole):
    """The whole-stack timing extrapolates from the first steps, then times whole the strategies within twice the
    fastest prediction where that is cheap (the line had picked the slower strategy for a T=100 LSTM)."""
    import time as time_

    monkeypatch.setattr(tune, "CAL_FULL_S", full_budget_s)
    costs_ms = {"cpu": (0.05, 0.002), "aten": (0.05, 0.003), "cells": (0.5, 0.1)}  # per call, per step
    seen = []

    def runners(name, n):
        def run():
            seen.append((name, n))
            end = time_.perf_counter() + (costs_ms[name][0] + costs_ms[name][1] * n) / 1e3
            while time_.perf_counter() < end:
                pass
        return run

    entry = tune.time_stacks(runners, 100, tune.STACK_WAYS)
    assert entry["engine"] == "cpu"
    whole = {name for name, n in seen if n == 100}
    assert whole == ({"cpu", "aten"} if timed_whole else set()), whole
