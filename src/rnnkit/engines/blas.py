"""The BLAS matrix product that torch itself uses, callable from Numba-compiled loops.

Why: the recurrent product of each step must run inside the compiled time loop, and
Numba's own np.dot goes through SciPy's OpenBLAS, a second thread pool beside torch's and
slower for these small products. torch's CPU build exports the Fortran BLAS symbols of the
library it is linked with (MKL on x86-64), which run in torch's own thread pool.

The function's address is passed to compiled code as an integer argument, never baked in
as a constant, so Numba can cache the compiled loops across processes.
"""

from __future__ import annotations

import ctypes
import glob
import os
from functools import lru_cache

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


def _find(symbol: str) -> int | None:
    """Address of a symbol exported by torch's CPU library, or None."""
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for path in sorted(glob.glob(os.path.join(libdir, "libtorch_cpu.*"))):
        try:
            fn = getattr(ctypes.CDLL(path), symbol)
        except (OSError, AttributeError):
            continue
        return ctypes.cast(fn, ctypes.c_void_p).value
    return None


@lru_cache(maxsize=None)
def gemm_address(dtype: torch.dtype) -> int | None:
    """Address of sgemm_ (float32) or dgemm_ (float64), or None where torch exports none."""
    return _find({torch.float32: "sgemm_", torch.float64: "dgemm_"}[dtype])


@intrinsic
def _call_fortran_gemm(typingctx, fn, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """fn(&transa, &transb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc): Fortran passes by reference."""
    sig = types.void(fn, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        fn_addr, *rest = args
        voidptr = ir.IntType(8).as_pointer()
        ptrs = []
        for value, ty in zip(rest, signature.args[1:], strict=True):
            if isinstance(ty, types.Integer) and ty.bitwidth == 64 and ty is types.uintp:  # already an address
                ptrs.append(builder.inttoptr(value, voidptr))
            else:  # a scalar: store it and pass its address
                slot = cgutils.alloca_once_value(builder, value)
                ptrs.append(builder.bitcast(slot, voidptr))
        fnty = ir.FunctionType(ir.VoidType(), [voidptr] * 13)
        builder.call(builder.inttoptr(fn_addr, fnty.as_pointer()), ptrs)
        return context.get_dummy_value()

    return sig, codegen


_N, _T = np.uint8(ord("N")), np.uint8(ord("T"))


@njit(inline="always")
def gemm(fn, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major C (m x n) = alpha op(A) op(B) + beta C; a, b, c are arrays whose first element starts the matrix.

    For row-major arrays, C = A @ B is computed as C^T = B^T A^T, so callers swap the operands.
    """
    _call_fortran_gemm(fn, _T if trans_a else _N, _T if trans_b else _N, np.int32(m), np.int32(n), np.int32(k),
                       alpha, a.ctypes.data, np.int32(lda), b.ctypes.data, np.int32(ldb), beta, c.ctypes.data,
                       np.int32(ldc))
