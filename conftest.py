"""pytest settings that pyproject.toml cannot hold."""

import importlib.util

# --doctest-modules imports every module under src/rnnkit; the Triton kernels need triton (in the test extra)
collect_ignore = [] if importlib.util.find_spec("triton") else ["src/rnnkit/engines/triton_kernels.py"]
