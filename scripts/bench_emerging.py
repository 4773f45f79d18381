"""Benchmarks for the emerging plugin (CPU by default; medians, ratios against a
baseline measured in the same process).

1. Convolution implementation inside a scanned stack of layers: shifted-matmul
   convolutions vs `lax.conv_general_dilated` (jax issue #12868) vs the plugin's
   default choice by channel count; training step (forward + backward) of 3
   stacked layers on a batch of MNIST-sized activations.
2. Model training step (loss + gradient, batch 100, 1 x 28 x 28) of
   emerging_cnn and exponential_cnn against exact_cnn (the SNF paper's exact
   3x3 convolution baseline, if the selfnorm plugin is installed).
3. Sampling (the emerging inverse by wavefront substitution) vs density
   evaluation, batch 100.

    python scripts/bench_emerging.py [--repeats 10] [--batch 100]
"""

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp

import zoo
import zoo_emerging.conv as conv_mod
from zoo.bijections import Chain
from zoo_emerging import ConvExp, Emerging

def timed(fn, *args, repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times), compile_s


def stack_step(make, shape, batch):
    chain = Chain([make(k) for k in jax.random.split(jax.random.key(0), 3)])
    xs = jax.random.normal(jax.random.key(1), (batch, *shape))

    @eqx.filter_jit
    def step(m, xs):
        def loss(m):
            z, ld = jax.vmap(m.forward)(xs)
            return jnp.mean(0.5 * jnp.sum(z**2, axis=(1, 2, 3)) - ld)

        return eqx.filter_grad(loss)(m)

    return step, chain, xs


def bench_conv_impl(repeats, batch):
    print("\n1. convolutions in a scanned 3-layer stack, train step (ms, median): shifted matmuls vs lax.conv,")
    print(f"   and the plugin's default (lax.conv when C_in * C_out <= {conv_mod.LAX_MAX_CHANNEL_PRODUCT}, else shifted)")
    print(f"{'layer':<34}{'shifted':>10}{'lax.conv':>10}{'default':>10}{'lax/shifted':>13}")
    cases = [
        ("emerging (1x28x28)", lambda k: Emerging((1, 28, 28), key=k), (1, 28, 28)),
        ("emerging (4x14x14)", lambda k: Emerging((4, 14, 14), key=k), (4, 14, 14)),
        ("emerging (16x7x7)", lambda k: Emerging((16, 7, 7), key=k), (16, 7, 7)),
        ("conv_exp, 6 terms (1x28x28)", lambda k: ConvExp((1, 28, 28), key=k, inference=False), (1, 28, 28)),
        ("conv_exp, 6 terms (4x14x14)", lambda k: ConvExp((4, 14, 14), key=k, inference=False), (4, 14, 14)),
        ("conv_exp, 6 terms (16x7x7)", lambda k: ConvExp((16, 7, 7), key=k, inference=False), (16, 7, 7)),
    ]
    default = dict(conv_mod.LAX_MAX_CHANNEL_PRODUCT)
    for name, make, shape in cases:
        res = {}
        # the threshold is read when a function is traced: -1 forces shifted, a huge one lax.conv
        for impl, threshold in (("shifted", -1), ("lax", 10**9), ("default", None)):
            conv_mod.LAX_MAX_CHANNEL_PRODUCT.update(default if threshold is None else dict.fromkeys(default, threshold))
            step, chain, xs = stack_step(make, shape, batch)
            res[impl], _ = timed(step, chain, xs, repeats=repeats)
        conv_mod.LAX_MAX_CHANNEL_PRODUCT.update(default)
        print(f"{name:<34}{1e3 * res['shifted']:>10.1f}{1e3 * res['lax']:>10.1f}{1e3 * res['default']:>10.1f}"
              f"{res['lax'] / res['shifted']:>13.2f}")


def bench_models(repeats, batch):
    print(f"\n2. model train step, batch {batch}, 1x28x28 (loss + gradient; ms, median; compile s)")
    names = [n for n in ("exact_cnn", "emerging_cnn", "exponential_cnn") if n in zoo.list_models()]
    x = jax.random.uniform(jax.random.key(2), (batch, 1, 28, 28))
    results = {}
    for name in names:
        model = zoo.create_model(name, key=jax.random.key(0), input_shape=(1, 28, 28))

        @eqx.filter_jit
        def step(m, xs):
            def loss(m):
                keys = jax.random.split(jax.random.key(3), xs.shape[0])
                return jnp.mean(jax.vmap(lambda xi, k: m.loss(xi, key=k)[0])(xs, keys))

            return eqx.filter_value_and_grad(loss)(m)

        results[name] = timed(step, model, x, repeats=repeats)
    base = results.get("exact_cnn", next(iter(results.values())))[0]
    for name, (t, c) in results.items():
        print(f"{name:<18}{1e3 * t:>10.1f} ms  x{t / base:5.2f} vs {'exact_cnn' if 'exact_cnn' in results else names[0]}"
              f"   compile {c:5.1f} s")


def bench_sampling(repeats, batch):
    print(f"\n3. sampling vs log_prob, batch {batch}, 1x28x28 (ms, median)")
    for name in ("emerging_cnn", "exponential_cnn"):
        model = zoo.create_model(name, key=jax.random.key(0), input_shape=(1, 28, 28))
        x = jax.random.uniform(jax.random.key(2), (batch, 1, 28, 28))
        keys = jax.random.split(jax.random.key(4), batch)
        lp = eqx.filter_jit(lambda m, xs: jax.vmap(m.log_prob)(xs))
        sample = eqx.filter_jit(lambda m, ks: jax.vmap(m.sample)(ks))
        t_lp, _ = timed(lp, model, x, repeats=repeats)
        t_s, _ = timed(sample, model, keys, repeats=repeats)
        print(f"{name:<18} log_prob {1e3 * t_lp:8.1f}   sample {1e3 * t_s:8.1f}   sample/log_prob {t_s / t_lp:5.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--only", choices=["conv", "models", "sampling"], default=None)
    a = p.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {len(jax.devices())} device(s)")
    if a.only in (None, "conv"):
        bench_conv_impl(a.repeats, a.batch)
    if a.only in (None, "models"):
        bench_models(a.repeats, a.batch)
    if a.only in (None, "sampling"):
        bench_sampling(a.repeats, a.batch)


if __name__ == "__main__":
    main()
