"""The conversion cache's key sees everything that changes an export: weights, the module's code, its
plain attributes. A key blind to ``forward`` would hand a changed model its old artifact, and a gate
comparing two commits would compare a change with itself."""

from __future__ import annotations

import textwrap

from deploybench.converters.cache import model_fingerprint
from deploybench.resolve import get_model

NETWORK = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, scale=1.0):
            super().__init__()
            self.scale = scale
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3)) * self.scale{extra}

    def build():
        torch.manual_seed(0)
        return Net({scale}).eval()
''')


def _fingerprint(tmp_path, name: str, extra: str = "", scale: str = "1.0") -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(NETWORK.format(extra=extra, scale=scale))
    return model_fingerprint(get_model(f"{path}:build", input_shapes=[(1, 3, 8, 8)]))


def test_the_same_code_and_weights_give_the_same_key(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _fingerprint(tmp_path / "a", "net") == _fingerprint(tmp_path / "b", "net")


def test_an_edited_forward_changes_the_key(tmp_path):
    assert _fingerprint(tmp_path, "before") != _fingerprint(tmp_path, "after", extra=" + 1")


def test_a_plain_attribute_changes_the_key(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _fingerprint(tmp_path / "a", "net") != _fingerprint(tmp_path / "b", "net", scale="2.0")


def test_a_changed_converter_makes_a_new_key(small_cnn_spec, monkeypatch):
    """Code of deploybench's own converters is part of the key: an upgrade never reuses what the old code made."""
    from deploybench.converters import cache

    before = cache.conversion_key(small_cnn_spec, "onnx", "int8", {})
    assert cache.conversion_key(small_cnn_spec, "onnx", "int8", {}) == before
    monkeypatch.setattr(cache, "_converter_digest", "another converter")
    assert cache.conversion_key(small_cnn_spec, "onnx", "int8", {}) != before


def test_random_calibration_never_holds_an_input_a_cell_is_judged_on(small_cnn_spec, tmp_path):
    """A model without calibration data is calibrated on seeded noise; none of it may be the run's seed-0
    input or the agreement samples, or the int8 ranges would be fitted to the very inputs judged."""
    import numpy as np

    from deploybench.converters.calibration import SOURCE_RANDOM, calibration_inputs
    from deploybench.harness.measure.accuracy import AGREEMENT_SAMPLES, AGREEMENT_SEED

    calibration = calibration_inputs(small_cnn_spec, n=64, seed=0, cache_dir=tmp_path)
    assert calibration.source == SOURCE_RANDOM
    judged = [small_cnn_spec.make_inputs(seed=s) for s in (0, *range(AGREEMENT_SEED, AGREEMENT_SEED + AGREEMENT_SAMPLES))]
    for sample in calibration.samples:
        for inputs in judged:
            assert not all(np.array_equal(sample[name], inputs[name]) for name in inputs)
