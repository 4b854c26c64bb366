"""Compile every Triton kernel variant the engine launches for an H100 (sm_90), on a machine without a GPU.

Triton's interpreter runs the kernels as Python, so it misses what only the compiler rejects (types
that change inside a loop, unsupported constructs, register or shared-memory limits).
tests/test_triton_engine.py runs this script in a fresh process, without TRITON_INTERPRET:

    python tests/compile_triton_kernels.py [--arch 90] [--all | --plans]
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from rnnkit.engines import triton_kernels as K

SHARED_LIMIT = 232448  # bytes per block on an H100/H200 (sm_90), as Triton reports it
INTS = ("T", "k0", "k1", "H", "P")
INT_POINTERS = ("sizes_ptr", "offsets_ptr", "sync_ptr")
FLOAT32_POINTERS = ("cs_ptr", "gates_ptr", "cache_ptr", "d_state_ptr", "dc_state_ptr")  # float32 whatever the input


def signature(fn, dtype: str, constexprs: dict) -> tuple[dict, dict]:
    names = list(inspect.signature(fn.fn).parameters)
    sig = {}
    for name in names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in INTS:
            sig[name] = "i32"
        elif name in INT_POINTERS:
            sig[name] = "*i32"
        else:
            sig[name] = "*fp32" if name in FLOAT32_POINTERS else f"*{dtype}"
    return sig, {(names.index(k),): v for k, v in constexprs.items()}


def variants():
    """(kernel, constexprs) for what triton.py launches: both strategies, every phase, each flag."""
    tiles = [dict(BLOCK_B=16, BLOCK_H=32, BLOCK_K=32)]
    for sync, tile in itertools.product((True, False), tiles):
        # both float32 precisions compile: "ieee" (F32_PRECISION can ask for it) and the default "tf32x3"
        common = dict(SYNC=sync, REVERSE=sync, PRECISION="ieee" if sync else "tf32x3", UPCAST=False, **tile)
        yield K.rnn_forward, dict(common, RELU=False, HAS_BIAS=True)
        yield K.rnn_backward, dict(common, RELU=True, DO_GATES=True, DO_PRODUCT=sync)
        for proj in (False, True):
            yield K.lstm_forward, dict(common, HAS_BIAS=True, HAS_PROJ=proj, DO_GATES=True, DO_PROJ=sync,
                                       W_RESIDENT=False)
            yield K.lstm_backward, dict(common, HAS_PROJ=proj, DO_TOTAL=True, DO_GATES=True, DO_PRODUCT=sync)
        yield K.gru_forward, dict(common, HAS_BIAS=False)
        yield K.gru_backward, dict(common, DO_GATES=True, DO_PRODUCT=sync)
    resident = dict(SYNC=True, REVERSE=False, PRECISION="tf32", UPCAST=False, BLOCK_B=16, BLOCK_H=16, BLOCK_K=256)
    yield K.lstm_forward, dict(resident, HAS_BIAS=True, HAS_PROJ=False, DO_GATES=True, DO_PROJ=True, W_RESIDENT=True)


def plan_variants():
    """(kernel, constexprs, num_warps) for the tiles make_plan picks on a 132-SM H100 across benchmarks/gpu.py's
    grid (LSTM and GRU, B in {1, 16, 64, 256}, H in {256, 512, 1024}, both strategies), bf16 and float32."""
    import torch

    from rnnkit.engines import triton as tri

    class Cuda:  # what make_plan reads of an input tensor
        device = torch.device("cuda")

        def __init__(self, dtype):
            self.dtype = dtype

        def element_size(self):
            return torch.empty(0, dtype=self.dtype).element_size()

    tri.num_sms = lambda device: 132
    seen = set()
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        for hidden, batch, strategy in itertools.product((256, 512, 1024), (1, 16, 64, 256), ("persistent", "stepwise")):
            tri.STRATEGY = strategy
            try:
                fwd, bwd = tri.make_plan(batch, hidden, hidden, Cuda(dtype), keep_w=True), \
                    tri.make_plan(batch, hidden, hidden, Cuda(dtype))
            except RuntimeError:  # no persistent grid fits: the engine would not launch one
                continue
            sync = fwd.persistent

            def tiles(p):
                return dict(SYNC=sync, REVERSE=False, PRECISION=tri.F32_PRECISION, UPCAST=False, BLOCK_B=p.block_b,
                            BLOCK_H=p.block_h, BLOCK_K=p.block_k)
            for fn, plan, flags in (
                    (K.lstm_forward, fwd, dict(HAS_BIAS=True, HAS_PROJ=False, DO_GATES=True, DO_PROJ=sync,
                                               W_RESIDENT=fwd.w_resident)),
                    (K.lstm_backward, bwd, dict(HAS_PROJ=False, DO_TOTAL=sync, DO_GATES=True, DO_PRODUCT=sync)),
                    (K.gru_forward, bwd, dict(HAS_BIAS=True)),
                    (K.gru_backward, bwd, dict(DO_GATES=True, DO_PRODUCT=sync))):
                constexprs = dict(tiles(plan), **flags)
                key = (fn.fn.__name__, name, plan.num_warps, tuple(sorted(constexprs.items())))
                if key not in seen:
                    seen.add(key)
                    yield name, fn, constexprs, plan.num_warps
    tri.STRATEGY = "auto"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--plans", action="store_true", help="instead: the tiles benchmarks/gpu.py's grid launches "
                                                            "(about 45 variants)")
    parser.add_argument("--all", action="store_true", help="float32 too for every kernel (default: bf16 for all, "
                                                          "float32 for the LSTM's, whose tl.dot takes PRECISION)")
    args = parser.parse_args()
    if K.INTERPRETED or os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled", file=sys.stderr)
        return 2
    target = GPUTarget("cuda", args.arch, 32)
    count = 0
    if args.plans:
        for dtype, fn, constexprs, num_warps in plan_variants():
            sig, consts = signature(fn, dtype, constexprs)
            kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                                    options={"num_warps": num_warps})
            if kernel.metadata.shared > SHARED_LIMIT:  # else the launch fails with OutOfResources on the GPU
                print(f"{fn.fn.__name__} {dtype} {constexprs}: {kernel.metadata.shared} bytes of shared memory "
                      f"> {SHARED_LIMIT}", file=sys.stderr)
                return 1
            count += 1
        print(f"compiled {count} kernel variants for sm_{args.arch}")
        return 0
    for dtype in ("bf16", "fp32"):
        for fn, constexprs in variants():
            if dtype == "fp32" and not args.all and fn not in (K.lstm_forward, K.lstm_backward):
                continue
            sig, consts = signature(fn, dtype, constexprs)
            triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                           options={"num_warps": 8 if constexprs.get("W_RESIDENT") else 4})
            count += 1
    print(f"compiled {count} kernel variants for sm_{args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
