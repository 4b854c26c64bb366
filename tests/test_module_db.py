"""What torch's own module tests (test/test_modules.py, TestModule) ask of torch.nn's recurrent layers and
cells, asked of rnnkit's in their place.

Every input comes from the ModuleInfo entries that torch.testing._internal.common_modules holds for RNN,
LSTM, GRU and the three cells (the same inputs torch's suite feeds torch.nn). torch's test file is not
installed with torch, so its checks are written out here, one test per check:

- forward: torch's reference function where the entry has one, torch.nn's output on the same weights,
  and `.float()` / `.double()` afterwards;
- gradients: gradcheck and gradgradcheck in float64 with torch's testing defaults, which include the
  batched-gradient check (`is_grads_batched=True`: a legacy-vmap batch of upstream gradients);
- non-contiguous inputs: the same outputs and gradients as contiguous ones, contiguous outputs;
- save/load: the whole module pickled, the state_dict loaded with weights_only;
- construction: factory kwargs (device, dtype), a `torch.device("meta")` block with the same
  metadata as on the CPU, `to_empty`, `.to()` with and without swapping parameters, gradients set;
- a module without its `training` attribute only fails where the entry says training matters.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile

import pytest
import torch
from torch.testing._internal import common_modules
from torch.testing._internal.common_utils import TestCase, freeze_rng_state, gradcheck, gradgradcheck
from torch.utils import _pytree as pytree

import rnnkit
from rnnkit.testing import assert_close

CLASSES = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]
MODULE_INFOS = {info.module_cls: info for info in common_modules.module_db}
DTYPES = {"f32": torch.float32, "f64": torch.float64}


def module_inputs(name: str, dtype: torch.dtype, training: bool, requires_grad: bool = False) -> list:
    info = MODULE_INFOS[getattr(torch.nn, name)]
    cases = list(info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=requires_grad,
                                         training=training))
    assert len(cases) >= 2, f"torch's ModuleInfo for {name} has {len(cases)} inputs; expected at least 2"
    return cases


def build(cls, case, dtype: torch.dtype, training: bool) -> torch.nn.Module:
    module = cls(*case.constructor_input.args, **case.constructor_input.kwargs).to(dtype)
    return module.train(training)


def call(module, case, args=None, kwargs=None):
    args = case.forward_input.args if args is None else args
    kwargs = case.forward_input.kwargs if kwargs is None else kwargs
    with freeze_rng_state():  # dropout between layers draws the same masks on both sides
        return module(*args, **kwargs)


def assert_trees_close(actual, expected, kind: str, what: str) -> None:
    actual, expected = pytree.tree_leaves(actual), pytree.tree_leaves(expected)
    assert len(actual) == len(expected), f"{what}: {len(actual)} tensors, expected {len(expected)}"
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, kind, f"{what} [{k}]")


def with_training(params):
    return pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])(params)


@with_training
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", CLASSES)
def test_forward_equals_torch_and_reference(name, dtype, training):
    for k, case in enumerate(module_inputs(name, dtype, training)):
        what = f"{name} input #{k}"
        module = build(getattr(rnnkit, name), case, dtype, training)
        twin = build(getattr(torch.nn, name), case, dtype, training)
        twin.load_state_dict(module.state_dict())
        out = call(module, case)
        assert_trees_close(out, call(twin, case), "output", what)
        if case.reference_fn is not None:
            assert_trees_close(out, case.reference_fn(module, *case.forward_input.args,
                                                      **case.forward_input.kwargs), "output", f"{what} reference")
        (module.float() if dtype == torch.float32 else module.double())(*case.forward_input.args,
                                                                         **case.forward_input.kwargs)
        assert all(p.dtype == dtype for p in module.parameters()), what


@with_training
@pytest.mark.parametrize("check", [gradcheck, gradgradcheck], ids=["grad", "gradgrad"])
@pytest.mark.parametrize("name", CLASSES)
def test_gradcheck_with_batched_gradients(name, check, training):
    """torch's testing gradcheck checks batched gradients by default (check_batched_grad=True)."""
    for k, case in enumerate(module_inputs(name, torch.float64, training, requires_grad=True)):
        module = build(getattr(rnnkit, name), case, torch.float64, training)
        args, kwargs = case.forward_input.args, case.forward_input.kwargs
        flat, spec = pytree.tree_flatten(tuple(args) + tuple(module.parameters()))

        def fn(*flat_inputs):
            inputs = pytree.tree_unflatten(flat_inputs, spec)
            return pytree.tree_leaves(call(module, case, inputs[:len(args)], kwargs))

        info = MODULE_INFOS[getattr(torch.nn, name)]
        assert check(fn, flat, fast_mode=info.gradcheck_fast_mode), f"{name} input #{k}"


def non_contiguous(tree):
    """torch's test_non_contiguous_tensors construction: every other element of a doubled last dimension."""

    def strided(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
        out.requires_grad = t.requires_grad
        return out

    return pytree.tree_map(strided, tree)


@with_training
@pytest.mark.parametrize("name", CLASSES)
def test_non_contiguous_inputs(name, training):
    for k, case in enumerate(module_inputs(name, torch.float64, training, requires_grad=True)):
        what = f"{name} input #{k}"
        module = build(getattr(rnnkit, name), case, torch.float64, training)
        strided = non_contiguous(case.forward_input.args)
        assert any(not t.is_contiguous() for t in pytree.tree_leaves(strided)), what
        results = []
        for args in (case.forward_input.args, strided):
            out = call(module, case, args)
            leaves = [t for t in pytree.tree_leaves(out) if t.requires_grad]
            assert all(t.is_contiguous() for t in leaves), f"{what}: an output is not contiguous"
            upstream = [torch.randn(t.shape, dtype=t.dtype, generator=torch.Generator().manual_seed(j))
                        for j, t in enumerate(leaves)]
            wrt = [t for t in pytree.tree_leaves(args) if t.requires_grad] + list(module.parameters())
            results.append((out, torch.autograd.grad(leaves, wrt, upstream, allow_unused=True)))
        (out_c, grads_c), (out_n, grads_n) = results
        assert_trees_close(out_n, out_c, "output", what)
        for j, (a, e) in enumerate(zip(grads_n, grads_c, strict=True)):
            assert_close(a, e, "grad", f"{what} gradient {j}")


@with_training
@pytest.mark.parametrize("name", CLASSES)
def test_save_and_load(name, training):
    for k, case in enumerate(module_inputs(name, torch.float32, training)):
        what = f"{name} input #{k}"
        module = build(getattr(rnnkit, name), case, torch.float32, training)
        state = module.state_dict()
        out = call(module, case)
        with tempfile.TemporaryFile() as f:
            torch.save(module, f)
            f.seek(0)
            loaded = torch.load(f, weights_only=False)
        assert type(loaded) is type(module), what
        assert_trees_close(call(loaded, case), out, "output", what)
        with tempfile.TemporaryFile() as f:
            torch.save(state, f)
            f.seek(0)
            weights = torch.load(f, weights_only=True)
        assert list(weights) == list(state), what
        for key in state:
            assert torch.equal(weights[key], state[key]), f"{what}: {key}"


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", CLASSES)
def test_factory_kwargs(name, dtype):
    for case in module_inputs(name, dtype, True):
        module = getattr(rnnkit, name)(*case.constructor_input.args, **case.constructor_input.kwargs,
                                       device="cpu", dtype=dtype)
        assert [(n, p.dtype, p.device.type) for n, p in module.named_parameters()] == \
            [(n, dtype, "cpu") for n, _ in module.named_parameters()]


@pytest.mark.parametrize("name", CLASSES)
def test_meta_device_block_builds_the_same_metadata(name):
    checker = TestCase()
    for case in module_inputs(name, torch.float32, True):
        args, kwargs = case.constructor_input.args, case.constructor_input.kwargs
        on_cpu = getattr(rnnkit, name)(*args, **kwargs)
        with torch.device("meta"):
            on_meta = getattr(rnnkit, name)(*args, **kwargs)
        pairs = list(zip(on_meta.named_parameters(), on_cpu.named_parameters(), strict=True))
        assert pairs, name
        for (n_meta, p_meta), (n_cpu, p_cpu) in pairs:
            assert n_meta == n_cpu and p_meta.is_meta, n_meta
            assert (p_meta.shape, p_meta.stride(), p_meta.dtype, p_meta.requires_grad) == \
                (p_cpu.shape, p_cpu.stride(), p_cpu.dtype, p_cpu.requires_grad), n_meta
        checker.assertEqual(len(list(on_meta.buffers())), len(list(on_cpu.buffers())))


@contextlib.contextmanager
def swapping(swap: bool):
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


@pytest.mark.parametrize("swap", [True, False], ids=["swap", "assign"])
@pytest.mark.parametrize("name", CLASSES)
def test_to_empty_from_meta(name, swap):
    for k, case in enumerate(module_inputs(name, torch.float32, True)):
        what = f"{name} input #{k}"
        with swapping(swap):
            with torch.device("meta"):
                module = getattr(rnnkit, name)(*case.constructor_input.args, **case.constructor_input.kwargs)
            ids = [id(p) for p in module.parameters()]
            module.to_empty(device="cpu")
        params = list(module.parameters())
        assert all(isinstance(p, torch.nn.Parameter) and p.device.type == "cpu" for p in params), what
        assert ([id(p) for p in params] == ids) is swap, f"{what}: parameters kept their identity: {not swap}"
        module.reset_parameters()
        twin = getattr(torch.nn, name)(*case.constructor_input.args, **case.constructor_input.kwargs)
        twin.load_state_dict(module.state_dict())
        assert_trees_close(call(module.eval(), case), call(twin.eval(), case), "output", what)


@pytest.mark.parametrize("set_grad", [True, False], ids=["grads", "no-grads"])
@pytest.mark.parametrize("swap", [True, False], ids=["swap", "assign"])
@pytest.mark.parametrize("name", CLASSES)
def test_to_keeps_parameters_and_grads(name, swap, set_grad):
    info = MODULE_INFOS[getattr(torch.nn, name)]
    for k, case in enumerate(module_inputs(name, torch.float32, True)):
        what = f"{name} input #{k}"
        with swapping(swap):
            module = getattr(rnnkit, name)(*case.constructor_input.args, **case.constructor_input.kwargs)
            if set_grad:
                for p in module.parameters():
                    p.grad = torch.randn_like(p)
            elif swap:  # torch's test: .to() after a forward and backward, when swapping
                out = call(module, case)
                (out[0] if isinstance(out, tuple) else out).sum().backward()
                module.to(dtype=torch.half).to(dtype=torch.float32)
            ids = [id(p) for p in module.parameters()]
            for dtype in info.dtypes:
                module.to(dtype=dtype)
                params = list(module.parameters())
                assert all(isinstance(p, torch.nn.Parameter) and p.dtype == dtype for p in params), f"{what} {dtype}"
                assert [id(p) for p in params] == ids, f"{what}: .to({dtype}) replaced a parameter"
                if set_grad:
                    assert all(p.grad.dtype == dtype for p in params), f"{what}: grads not moved to {dtype}"
            module.to(dtype=torch.float32)
            call(module, case)


@with_training
@pytest.mark.parametrize("name", CLASSES)
def test_without_training_attribute(name, training):
    """torch's test_if_train_and_eval_modes_differ: forward reads `training` only where the entry says it matters."""
    info = MODULE_INFOS[getattr(torch.nn, name)]
    for case in module_inputs(name, torch.float32, training):
        module = build(getattr(rnnkit, name), case, torch.float32, training)
        delattr(module, "training")
        try:
            call(module, copy.copy(case))
        except AttributeError as e:
            assert "'training'" in str(e) and info.train_and_eval_differ, f"{name}: {e}"
