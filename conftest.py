"""pytest settings that pyproject.toml cannot hold."""

import importlib.util
import os

# --doctest-modules imports every module under src/rnnkit; the Triton kernels need triton (in the test extra)
collect_ignore = [] if importlib.util.find_spec("triton") else [
    "src/rnnkit/engines/triton_kernels.py", *(f"src/rnnkit/engines/{family}/triton_kernels.py"
                                              for family in ("lstm_plus", "gru_plus", "minimal", "slstm"))]

# Triton's interpreter runs kernels on CPU tensors (tests/test_triton_engine.py). Triton reads
# TRITON_INTERPRET when it decorates a kernel, its own library's (tl.zeros, ...) included, which
# happens when triton is first imported, and test modules import it early (torch._dynamo does): so
# set it here, before any test module is collected. It changes only how Triton kernels run; set
# TRITON_INTERPRET=0 to opt out (the Triton engine's tests then skip).
os.environ.setdefault("TRITON_INTERPRET", "1")
