"""Issue 16 item 5: what converters, quantizers and a user's model print (C++ libraries writing to the
file descriptors, Python warnings, logging, progress bars) stays out of the table and the progress
line, and ``--verbose`` shows it. The chatter the issue saw came from torchvision, TensorFlow and
transformers, which this environment does not install; a model that prints the same way at every
level stands in for them."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

CHATTY_MODEL = textwrap.dedent('''
    import logging, os, sys, warnings
    import torch
    from torch import nn

    def say(where):
        os.write(2, f"I0000 00:00:1733 absl chatter from {where}\\n".encode())   # C++ logging, as absl does
        os.write(1, f"fd1 chatter from {where}\\n".encode())
        print(f"print chatter from {where}")
        warnings.warn(f"warning chatter from {where}")
        logging.getLogger("nncf").warning(f"logging chatter from {where}")
        sys.stderr.write(f"calibrating: 40%|####      | 60/150 chatter from {where}\\r")

    class Chatty(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(8, 4)

        def forward(self, x):
            if not torch.compiler.is_compiling() and not torch.jit.is_tracing():
                say("forward")
            return self.linear(x)

    def build():
        say("factory")
        return Chatty()
''')

CHATTER = ("absl chatter", "fd1 chatter", "print chatter", "warning chatter", "logging chatter", "calibrating: 40%")


@pytest.fixture(scope="module")
def chatty(tmp_path_factory):
    path = tmp_path_factory.mktemp("chatty") / "chatty.py"
    path.write_text(CHATTY_MODEL)
    return path


def _run(chatty, *extra):
    return subprocess.run([sys.executable, "-m", "deploybench.cli", "run", "--models", f"{chatty}:build",
                           "--input-shape", "1x8", "--backends", "torch,onnxruntime", "--precisions", "fp32,int8",
                           "--no-memory", "--min-time", "0.05", *extra],
                          capture_output=True, text=True, timeout=600)


def test_model_and_converter_chatter_stays_out_of_the_output(chatty):
    done = _run(chatty)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert not [words for words in CHATTER if words in output], output[-3000:]
    assert re.search(r"onnx\s+onnxruntime\s+int8 .* ok", done.stdout), done.stdout  # the table itself is there


def test_verbose_shows_the_chatter(chatty):
    done = _run(chatty, "--verbose", "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "absl chatter from forward" in output and "print chatter from factory" in output
