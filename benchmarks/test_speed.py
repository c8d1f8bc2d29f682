"""Steady-state latency of every cell through pytest-benchmark (``--benchmark-autosave`` keeps history). The test itself lives in
``deploybench.harness.suite`` so other projects import the same one."""

from deploybench.harness.suite import test_speed  # noqa: F401
