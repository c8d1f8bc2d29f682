"""Peak RSS of loading and running each cell, in a fresh child process. The test itself lives in
``deploybench.harness.suite`` so other projects import the same one."""

from deploybench.harness.suite import test_memory  # noqa: F401
