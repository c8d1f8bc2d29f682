"""How much of plain int8's speed accuracy-aware int8 keeps: per backend, the fp32, int8 and int8ac artifacts
of one model loaded side by side and timed in short windows that take turns, in this one process (this
machine changes speed within seconds, so only figures from the same rounds are compared).

    .venv/bin/python scripts/int8ac_speed.py --model mobilenet_v3 --backends openvino,onnxruntime --rounds 15

Each window runs one engine for ``--seconds`` and keeps its median call; the order rotates every round.
Printed per backend: each precision's median over the rounds (and range), then per round the ratios
int8 median / int8ac median (the share of plain int8's speed kept: 1.0 keeps all of it) and fp32 median /
int8ac median (int8ac's speed-up over fp32), as the median and range over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

PRECISIONS = ("fp32", "int8", "int8ac")


def window_median_ms(engine, inputs, seconds: float) -> float:
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        engine.infer(inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):.3g} (range {ordered[0]:.3g}-{ordered[-1]:.3g})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v3")
    parser.add_argument("--backends", default="openvino,onnxruntime")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer, engine_class
    from deploybench.resolve import get_model

    spec = get_model(args.model)
    inputs = spec.make_inputs(seed=0)
    for backend in args.backends.split(","):
        fmt = engine_class(backend).formats[0]
        artifacts = {p: deploy_model(spec, fmt, precision=p) for p in PRECISIONS}
        engines = {p: create_deployer(a, backend=backend, precision=p, threads=args.threads,
                                      static_dims=dict(spec.dims)).load() for p, a in artifacts.items()}
        for engine in engines.values():
            window_median_ms(engine, inputs, args.seconds)  # warm-up
        medians: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for round_index in range(args.rounds):
            shift = round_index % len(PRECISIONS)
            for precision in PRECISIONS[shift:] + PRECISIONS[:shift]:
                medians[precision].append(window_median_ms(engines[precision], inputs, args.seconds))
        for engine in engines.values():
            engine.close()
        kept = artifacts["int8ac"].metadata.get("ops_in_fp32") or []
        print(f"{args.model} {fmt} on {backend}, {args.rounds} rounds of {args.seconds:g} s windows, "
              f"{args.threads} threads; int8ac keeps {len(kept)} op(s) in fp32")
        for precision in PRECISIONS:
            print(f"  {precision:7s} median ms {spread(medians[precision])}")
        kept_share = [i8 / ac for i8, ac in zip(medians["int8"], medians["int8ac"])]
        speedup = [fp / ac for fp, ac in zip(medians["fp32"], medians["int8ac"])]
        plain = [fp / i8 for fp, i8 in zip(medians["fp32"], medians["int8"])]
        print(f"  int8 / int8ac (share of int8's speed kept) {spread(kept_share)}")
        print(f"  fp32 / int8ac (int8ac speed-up over fp32) {spread(speedup)}")
        print(f"  fp32 / int8   (plain int8 speed-up)       {spread(plain)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
