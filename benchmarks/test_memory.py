"""Peak RSS of loading and running each cell, in a fresh child process (a crash or hang fails only this cell)."""

from __future__ import annotations

import pytest


@pytest.mark.memory
def test_memory(cell, model, artifact, inputs, deploybench_settings, deploybench_result):
    from deploybench.harness.matrix import _measure_memory

    stopped = _measure_memory(model, cell, artifact, deploybench_settings, inputs, deploybench_result)
    if stopped:  # the child crashed (signal named in the reason) or ran past --cell-timeout
        pytest.fail(f"{cell.id}: memory child {deploybench_result.status}: {deploybench_result.reason}",
                    pytrace=False)
    if deploybench_result.peak_rss_mb is None:
        pytest.skip(f"{cell.id}: memory not measured: {deploybench_result.extra.get('memory', 'no reason given')}")
    assert deploybench_result.peak_rss_mb >= deploybench_result.baseline_rss_mb > 0
