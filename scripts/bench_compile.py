"""Compile time of a training step against depth: does `Chain` stay flat?

    OPENBLAS_NUM_THREADS=1 python scripts/bench_compile.py [--depths 4 32] [--repeats 3]

Builds a RealNVP-style vector flow (ActNorm, affine coupling, reverse) and a
Glow-style image flow (ActNorm, LU 1x1 convolution, affine coupling) from
`zoo.bijections.Chain` with N blocks, and times `jit(...).lower().compile()`
of a full Adam training step (loss, gradients, update). Chain stacks the
identical blocks and scans them, so compile time should not grow with N; the
unscanned 32-block chain (`Chain(..., scan=False)`) is the baseline that
shows what scanning buys. Reports medians over repeats and the ratio to the
shallowest depth, measured in the same process.
"""

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import zoo
from zoo.bijections import ActNorm, AffineCoupling, Chain, LULinear, Reverse
from zoo.distributions import StandardNormal


def vector_flow(n, key, d=16):
    layers = []
    for k in jax.random.split(key, n):
        layers += [ActNorm((d,)), AffineCoupling((d,), key=k, width=64, scale="exp"), Reverse()]
    return layers, (d,)


def image_flow(n, key, shape=(4, 8, 8)):
    layers = []
    for k in jax.random.split(key, n):
        k1, k2 = jax.random.split(k)
        layers += [ActNorm(shape), LULinear(shape, key=k1), AffineCoupling(shape, key=k2, width=32)]
    return layers, shape


def compile_seconds(layers, shape, *, scan, batch=32):
    model = zoo.Flow(Chain(layers, scan=scan), StandardNormal(shape))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    xs = jnp.zeros((batch,) + shape)

    def step(params, opt_state, xs):
        def loss(p):
            m = eqx.combine(p, static)
            return jnp.mean(jax.vmap(lambda x: m.loss(x)[0])(xs))

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    t0 = time.perf_counter()
    jax.jit(step).lower(params, opt_state, xs).compile()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    key = jax.random.key(0)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; median of {args.repeats} compiles\n")
    print(f"{'model':<8} {'blocks':>6} {'scan':>5} {'compile s':>10} {'x shallowest':>13}")
    for name, make in [("vector", vector_flow), ("image", image_flow)]:
        base = None
        runs = [(n, True) for n in args.depths] + [(max(args.depths), False)]
        for n, scan in runs:
            layers, shape = make(n, key)
            t = statistics.median(compile_seconds(layers, shape, scan=scan) for _ in range(args.repeats))
            base = base or t
            print(f"{name:<8} {n:>6} {str(scan):>5} {t:>10.2f} {t / base:>13.2f}")


if __name__ == "__main__":
    main()
