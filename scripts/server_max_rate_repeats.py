"""The server scenario's max rate under a p99 budget, searched several times on one model of ~2 ms.

The model is three 3x3 convolutions over 32 channels at 64x64 (the tests' conv net at a larger
input), exported to ONNX and run on ONNX Runtime with one intra-op thread per request (two requests
on this 2-core machine). Each repeat is a full ``find_max_rate`` with its own seed; the repeats agree
when their brackets [highest pass, lowest fail] share a rate.

    PYTHONPATH=. python scripts/server_max_rate_repeats.py --repeats 3 --budget-ms 10 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def conv_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-ms", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--trial-s", type=float, default=2.0)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer
    from deploybench.harness.measure.rate_search import find_max_rate
    from deploybench.harness.measure.timing import benchmark_inference
    from deploybench.models import model_from_module

    shape = (1, 3, args.size, args.size)
    inputs = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    spec = model_from_module(conv_net(), np.zeros(shape, np.float32), name=f"conv_{args.size}",
                             output_names=["logits"])
    searches = []
    with create_deployer(deploy_model(spec, "onnx", output_dir=args.cache), backend="onnxruntime",
                         threads=1) as engine:
        single = benchmark_inference(engine, inputs, min_time_s=1.0)
        print(f"single-stream median {single.stats.median:.3f} ms, p99 {single.stats.p99:.3f} ms")
        for repeat in range(args.repeats):
            search = find_max_rate(engine, inputs, p99_budget_ms=args.budget_ms, trial_s=args.trial_s,
                                   seed=repeat, max_time_s=120.0)
            searches.append(search)
            print(f"repeat {repeat}: {search.message}; {len(search.trials)} trials in {search.elapsed_s:.0f} s, "
                  f"offline capacity {search.capacity_per_s:.0f}/s, load {os.getloadavg()[0]:.2f}")
            for t in search.trials:
                print(f"    {t.rate_per_s:8.1f}/s x{t.runs}  p50 {t.p50_ms:6.2f}  p90 {t.p90_ms:6.2f}  p99 {t.p99_ms:7.2f} ms  "
                      f"{'pass' if t.passed else 'FAIL'}{'  overloaded' if t.overloaded else ''}  "
                      f"generator lateness p99 {t.lateness_p99_ms:.2f} ms")
            if search.overhead:
                print(f"    no-op pool at {search.max_rate_per_s:.0f}/s (generator overhead): "
                      f"p50 {search.overhead.median:.3f} ms, p99 {search.overhead.p99:.3f} ms")
    met = [s for s in searches if s.met]
    lows = [s.bracket_low for s in met]
    highs = [s.bracket_high if s.bracket_high is not None else float("inf") for s in met]
    agree = bool(met) and len(met) == len(searches) and max(lows) <= min(highs)
    rates = [s.max_rate_per_s for s in met]
    summary = {"single_stream_median_ms": single.stats.median, "budget_ms": args.budget_ms, "max_rates": rates,
               "brackets": [[s.bracket_low, s.bracket_high] for s in searches], "agree_within_brackets": agree,
               "searches": [s.to_dict() for s in searches]}
    if rates:
        print(f"max rates {', '.join(f'{r:.1f}' for r in rates)}/s (spread {min(rates):.1f}-{max(rates):.1f}); "
              f"brackets {', '.join(f'[{lo:.1f}, {hi:.1f})' for lo, hi in zip(lows, highs))}: "
              f"{'they share a rate' if agree else 'they do NOT share a rate'}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
