#!/usr/bin/env python
"""Is the input pipeline fast enough? Compare the time `zoo.data.pipeline`
takes to deliver one batch with the time one training step of a small
Glow-like flow takes to consume it, for MNIST- and CIFAR-shaped batches.

    OPENBLAS_NUM_THREADS=1 python scripts/bench_data.py [--batch-size 64] [--json out.json]

Data: MNIST = the bundled 4,000-image train split; CIFAR = 10,000 random
uint8 3x32x32 images with flip augmentation. Both with uniform
dequantization, shuffling and the full grain pipeline. Timed twice: with
`prefetch=0` (every batch built on demand: the cost of one batch) and with
the default background prefetch (what a training loop sees when it asks for
batches back to back).

Step: logit preprocessing, then 2 levels of [Squeeze, 4 x (ActNorm, LULinear,
AffineCoupling)] (zoo core layers in a Chain, unrolled unless --scan, in a
zoo.Flow), mean negative log-likelihood, optax Adam, under eqx.filter_jit,
after data-dependent init and one compile. Medians over the timed repetitions; ratio = step / batch.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import zoo
from zoo.bijections import ActNorm, AffineCoupling, Chain, LULinear, Squeeze
from zoo.data import pipeline, preprocessing_bijection
from zoo.distributions import StandardNormal


def glow_like(key, shape, *, levels=2, depth=4, width=64, scan=False):
    c, h, w = shape
    layers = [preprocessing_bijection()]
    keys = iter(jax.random.split(key, 2 * levels * depth))
    for _ in range(levels):
        layers.append(Squeeze((c, h, w)))
        c, h, w = 4 * c, h // 2, w // 2
        for _ in range(depth):
            s = (c, h, w)
            layers += [ActNorm(s), LULinear(s, key=next(keys)), AffineCoupling(s, key=next(keys), width=width)]
    return zoo.Flow(Chain(layers, scan=scan), StandardNormal((c, h, w)))


def time_batches(pipe, n):
    it = pipe.iterator()
    for _ in range(5):  # warm up (thread start, first shuffle blocks)
        next(it)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t)
    return statistics.median(times), sum(times) / n


def time_steps(shape, batch, n, *, key, scan=False):
    model = glow_like(key, shape, scan=scan)
    model = zoo.data_init(model, jnp.asarray(batch))
    opt = optax.adam(1e-3)
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state, x):
        def loss_fn(m):
            return jnp.mean(jax.vmap(m.loss)(x)[0])

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    x = jnp.asarray(batch)
    t = time.perf_counter()
    model, opt_state, loss = step(model, opt_state, x)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(n):
        t = time.perf_counter()
        model, opt_state, loss = step(model, opt_state, x)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t)
    if not np.isfinite(float(loss)):
        raise RuntimeError("training step produced a non-finite loss")
    return statistics.median(times), compile_s, float(loss)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=200, help="timed pipeline batches")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--scan", action="store_true",
                        help="scan repeated blocks (Chain's default); much slower on XLA:CPU, so off here: "
                             "the faster unrolled step is the stricter comparison")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    cifar = np.random.default_rng(0).integers(0, 256, (10_000, 3, 32, 32), dtype=np.uint8)
    cases = [
        ("MNIST 1x28x28", "mnist_bundled", {}),
        ("CIFAR 3x32x32", cifar, {"flip": True}),
    ]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch_size}, chain scan={args.scan}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    results = []
    for label, data, opts in cases:
        build = dict(split="train", batch_size=args.batch_size, seed=0, **opts)
        on_demand, _ = time_batches(pipeline(data, prefetch=0, **build), args.batches)
        prefetched_median, prefetched_mean = time_batches(pipeline(data, **build), args.batches)
        batch = next(iter(pipeline(data, **build)))["x"]
        step, compile_s, loss = time_steps(batch.shape[1:], batch, args.steps, key=jax.random.key(0), scan=args.scan)
        r = {
            "data": label,
            "batch_ms_on_demand": 1e3 * on_demand,
            "batch_ms_prefetch_median": 1e3 * prefetched_median,
            "batch_ms_prefetch_mean": 1e3 * prefetched_mean,
            "step_ms": 1e3 * step,
            "compile_s": compile_s,
            "ratio": step / on_demand,
            "ratio_prefetch_mean": step / prefetched_mean,
            "loss_nats": loss,
        }
        results.append(r)
        print(
            f"{label}: batch {r['batch_ms_on_demand']:.2f} ms on demand "
            f"(prefetch: median {r['batch_ms_prefetch_median']:.3f} ms, mean {r['batch_ms_prefetch_mean']:.2f} ms) | "
            f"train step {r['step_ms']:.1f} ms (compile {compile_s:.1f} s) | "
            f"ratio {r['ratio']:.0f}x on demand, {r['ratio_prefetch_mean']:.0f}x prefetched "
            f"[{'ok' if r['ratio'] >= 20 else 'BELOW 20x'}]"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all(r["ratio"] >= 20 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
