"""Accuracy of each cell against the fp32 reference, under the per-precision tolerance. The test itself lives in
``deploybench.harness.suite`` so other projects import the same one."""

from deploybench.harness.suite import test_precision  # noqa: F401
