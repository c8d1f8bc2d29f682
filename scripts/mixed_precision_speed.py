"""Mixed precision on OpenVINO's CPU plugin: the fp32, int8 and int8ac IR of one model compiled with an f32 or a
bf16 inference-precision hint, timed side by side in short windows that take turns in this one process, and
judged on the model's real held-out inputs (the ones the harness judges it on) against PyTorch fp32.

    .venv/bin/python scripts/mixed_precision_speed.py --model mobilenet_v3 --rounds 12

"int8ac, kept ops bf16" is int8ac's IR with the floating-point ops NNCF kept run in bf16 instead of fp32:
whether the layers that had to leave int8 can run at bf16's speed without losing what int8ac won back.
Printed per variant: median of the rounds' window medians (and range), cosine and top-1 agreement with
PyTorch fp32, and the compute layers by the precision each ran in. Needs a CPU with bf16 (the plugin lists
BF16 in OPTIMIZATION_CAPABILITIES); elsewhere the bf16 variants are refused, and the script says so.
"""

from __future__ import annotations

import argparse

from int8ac_speed import spread, window_median_ms

# (label, artifact precision, inference precision hint; None: the engine's own for that precision)
VARIANTS = (("fp32", "fp32", None), ("bf16", "fp32", "bf16"), ("int8", "int8", None),
            ("int8ac", "int8ac", None), ("int8ac, kept ops bf16", "int8ac", "bf16"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v3")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np

    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer
    from deploybench.harness.measure.accuracy import held_out_samples, make_reference
    from deploybench.resolve import get_model
    from deploybench.spec import DeployBenchError
    from deploybench.tasks.metrics import cosine_similarity

    spec = get_model(args.model)
    samples = held_out_samples(spec) or [spec.make_inputs(seed=s) for s in range(64)]
    reference = make_reference(spec)
    expected = [next(iter(reference(s).values())) for s in samples]
    artifacts = {p: deploy_model(spec, "openvino", precision=p) for p in ("fp32", "int8", "int8ac")}
    engines, judged = {}, {}
    for label, precision, hint in VARIANTS:
        options = {"inference_precision": hint} if hint else {}
        try:
            engine = create_deployer(artifacts[precision], backend="openvino", precision=precision,
                                     threads=args.threads, **options).load()
        except DeployBenchError as exc:
            print(f"{label}: not run: {exc}")
            continue
        got = [next(iter(engine.infer(s).values())) for s in samples]
        top1 = np.mean([g.argmax() == e.argmax() for g, e in zip(got, expected)])
        judged[label] = (cosine_similarity(np.stack(got), np.stack(expected)), float(top1),
                         engine.runtime_notes.get("layer_precisions"))
        engines[label] = engine
    inputs = samples[0]
    medians: dict[str, list[float]] = {label: [] for label in engines}
    for round_index in range(args.rounds):
        order = list(engines)[round_index % len(engines):] + list(engines)[:round_index % len(engines)]
        for label in order:
            medians[label].append(window_median_ms(engines[label], inputs, args.seconds))
    print(f"{args.model} on openvino, {len(samples)} held-out inputs, {args.rounds} rounds of {args.seconds} s windows")
    for label, values in medians.items():
        cosine, top1, layers = judged[label]
        print(f"  {label:22s} {spread(values)} ms  cosine {cosine:.4f}  top-1 agreement {top1:.3f}  layers {layers}")
    if "int8" in medians and "int8ac" in medians:
        kept = [a / b for a, b in zip(medians["int8"], medians["int8ac"])]
        print(f"  int8ac keeps {spread(kept)} of plain int8's speed (per-round int8 / int8ac)")
    if "int8" in medians and "int8ac, kept ops bf16" in medians:
        kept = [a / b for a, b in zip(medians["int8"], medians["int8ac, kept ops bf16"])]
        print(f"  int8ac with its kept ops in bf16 keeps {spread(kept)} of plain int8's speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
