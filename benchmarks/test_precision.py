"""Accuracy of each cell against the fp32 reference, under the per-precision tolerance (``--tolerance``)."""

from __future__ import annotations

import pytest


@pytest.mark.precision
def test_precision(cell, engine, reference, inputs, model, deploybench_settings, deploybench_result):
    from deploybench.harness.precision import benchmark_precision, check_tolerance

    accuracy = benchmark_precision(engine, reference, inputs, spec=model, dims=deploybench_settings.dims)
    deploybench_result.accuracy = accuracy
    passed, message = check_tolerance(accuracy, cell.precision, {**model.tolerances.get(cell.precision, {}),
                                                          **deploybench_settings.tolerances.get(cell.precision, {})})
    deploybench_result.extra["tolerance"] = {"passed": passed, "message": message}
    would_pass = f"atol {accuracy.atol_to_pass:.3g}" if accuracy.atol_to_pass is not None else ""
    if accuracy.rtol_to_pass is not None:
        would_pass += f", rtol {accuracy.rtol_to_pass:.3g}"
    assert passed, f"{cell.id} misses the {cell.precision} tolerance: {message}; would have passed with {would_pass}"
