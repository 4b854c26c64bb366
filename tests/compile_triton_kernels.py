"""Compile every Triton kernel variant the engine launches for an H100 (sm_90), on a machine without a GPU.

Triton's interpreter runs the kernels as Python, so it misses what only the compiler rejects (types
that change inside a loop, unsupported constructs, register or shared-memory limits).
tests/test_triton_engine.py runs this script in a fresh process, without TRITON_INTERPRET:

    python tests/compile_triton_kernels.py [--arch 90] [--all]
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
        common = dict(SYNC=sync, REVERSE=sync, PRECISION="ieee", UPCAST=False, **tile)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--all", action="store_true", help="float32 too for every kernel (default: bf16 for all, "
                                                          "float32 for the LSTM's, whose tl.dot takes PRECISION)")
    args = parser.parse_args()
    if K.INTERPRETED or os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled", file=sys.stderr)
        return 2
    target = GPUTarget("cuda", args.arch, 32)
    count = 0
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
