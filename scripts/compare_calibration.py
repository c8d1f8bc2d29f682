"""Calibrate `deploybench compare` through the path a CI job runs: fresh processes, both sides built
from git on this machine.

A temporary git project holds a CNN of about 2 ms (``LAYERS`` 3x3 convolutions on 1x3x48x48) in
three commits:

  base      the network
  reseeded  the same network with other weights: other bytes, the same compute (A/A)
  slower    one more layer: about 5 % more real compute (the achieved ratio is reported)

Each trial is one ``deploybench compare base <head> --models net.py:build@1x3x48x48 --backends
onnxruntime --json ...`` in a fresh process, as a CI job runs it: the base checked out in a worktree,
both sides converted (the cache converts each commit once), each side measured in its own worker
(two separate runs), then both artifacts interleaved in one worker until the verdict is decided.
Beside each trial's verdict, pytest-benchmark's ``--benchmark-compare-fail=median:5%`` rule is
applied to the same trial's two separate runs (their medians).

Usage:  .venv/bin/python scripts/compare_calibration.py [--aa 100] [--slower 50] [--out calib.json]
Prints a Markdown table at the end; each trial takes ~15 s on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NET = '''
import torch
from torch import nn

LAYERS = {layers}
SEED = {seed}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(SEED)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(*(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()) for _ in range(LAYERS)))
        self.head = nn.Conv2d(16, 4, 1)
        for conv in self.modules():  # He init keeps activations at scale through the ReLUs: no denormals
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)

    def forward(self, x):
        return self.head(self.body(torch.relu(self.stem(x))))


def build():
    return Net().eval()
'''
BASE_LAYERS = 18
CELL = "net-onnx-onnxruntime-fp32"


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=c@example.com", "-c", "user.name=c", *args], cwd=project, check=True,
                   capture_output=True)


def make_project(root: Path) -> None:
    _git(root, "init", "-q", "-b", "main")
    for tag, layers, seed in (("base", BASE_LAYERS, 0), ("reseeded", BASE_LAYERS, 1), ("slower", BASE_LAYERS + 1, 0)):
        (root / "net.py").write_text(NET.format(layers=layers, seed=seed))
        _git(root, "add", "net.py")
        _git(root, "commit", "-q", "-m", tag)
        _git(root, "tag", tag)


def trial(project: Path, head: str, out: Path, extra: list[str]) -> dict:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "deploybench.cli", "compare", "base", head,
                           "--models", "net.py:build@1x3x48x48", "--backends", "onnxruntime", "--precisions", "fp32",
                           "--no-progress", "--json", str(out), *extra],
                          cwd=project, capture_output=True, text=True, timeout=900)
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stderr[-2000:])
    data = json.loads(out.read_text())
    latency = next(v for v in data["verdicts"] if v["cell"] == CELL and v["metric"] == "latency")
    medians = {side: next(c["latency_ms"]["median"] for c in data["cells"][side]
                          if "-".join((c["model"], c["format"], c["backend"], c["precision"])) == CELL)
               for side in ("base", "head")}
    ratios = data["interleaved"].get(CELL, {}).get("ratios", [])
    return {"verdict": latency["verdict"], "ratio": latency["ratio"], "block_pairs": len(ratios),
            "exit": done.returncode, "seconds": round(time.monotonic() - started, 1),
            "base_median_ms": medians["base"], "head_median_ms": medians["head"],
            # pytest-benchmark's --benchmark-compare-fail=median:5% on the same two separate runs
            "pytest_benchmark_fails": medians["head"] > medians["base"] * 1.05}


def summarize(trials: list[dict]) -> dict:
    verdicts = [t["verdict"] for t in trials]
    return {"n": len(trials), **{v: verdicts.count(v) for v in sorted(set(verdicts))},
            "pytest_benchmark_fails": sum(t["pytest_benchmark_fails"] for t in trials),
            "ratio_median": round(float(np.median([t["ratio"] for t in trials])), 4),
            "separate_run_ratio_p05_p95": [round(float(q), 3) for q in np.quantile(
                [t["head_median_ms"] / t["base_median_ms"] for t in trials], [0.05, 0.95])],
            "block_pairs_mean": round(float(np.mean([t["block_pairs"] for t in trials])), 1),
            "seconds_per_trial": round(float(np.mean([t["seconds"] for t in trials])), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aa", type=int, default=100, help="A/A trials (base against reseeded)")
    parser.add_argument("--slower", type=int, default=50, help="trials against one more layer")
    parser.add_argument("--out", default="compare-calibration.json")
    parser.add_argument("--extra", default="--no-memory", help="more `deploybench compare` options")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"A/A": [], "slower": []}
    plan = ["reseeded"] * args.aa + ["slower"] * args.slower
    order = np.random.default_rng(0).permutation(len(plan))  # the two kinds interleaved, so drift hits both
    with tempfile.TemporaryDirectory(prefix="compare-calibration-") as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        make_project(project)
        for done, index in enumerate(order, 1):
            head = plan[index]
            found = trial(project, head, Path(tmp) / "v.json", args.extra.split())
            results["A/A" if head == "reseeded" else "slower"].append(found)
            print(f"{done}/{len(plan)} {head}: {found['verdict']} {found['ratio']:.3f} "
                  f"({found['block_pairs']} pairs, {found['seconds']} s; separate runs "
                  f"{found['head_median_ms'] / found['base_median_ms']:.3f})", flush=True)
            Path(args.out).write_text(json.dumps({"trials": results, "summary": {
                k: summarize(v) for k, v in results.items() if v}}, indent=1))
    summary = {k: summarize(v) for k, v in results.items()}
    aa, slow = summary["A/A"], summary["slower"]
    print(f"\n| | false alarms, A/A | caught, {slow['ratio_median'] - 1:+.1%} slower |\n| --- | --- | --- |")
    print(f"| deploybench compare | {aa.get('regression', 0)} / {aa['n']} | {slow.get('regression', 0)} / {slow['n']} |")
    print(f"| pytest-benchmark median:5% | {aa['pytest_benchmark_fails']} / {aa['n']} | "
          f"{slow['pytest_benchmark_fails']} / {slow['n']} |")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
