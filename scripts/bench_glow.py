"""Glow benchmarks: training-step time per mixing layer, and compile time against depth.

    OPENBLAS_NUM_THREADS=1 python scripts/bench_glow.py step [--mixing conv1x1 selfnorm_conv1x1] [--repeats 30]
    OPENBLAS_NUM_THREADS=1 python scripts/bench_glow.py compile [--depths 4 32] [--repeats 3]

`step`: a Glow (3 levels x 8 steps, width 64 by default) on 3 x 32 x 32 inputs,
batch 64; the trainer's own jitted step (`zoo.train.loop.make_train_step`:
training-mode loss, gradients, Adam 1e-3, the after_update / after_step
hooks), median wall time over repeats after warm-up. Mixing layers are given by registered name; names not registered in
this environment are skipped with a note. Each runs in the registered Glow
configuration made for it if there is one (selfnorm_conv1x1 -> selfnorm_glow,
whose loss takes the self-normalized path), else in `glow`. Ratios are against the first
mixing layer, measured in the same process.

`compile`: trace + lower + compile time of the same training step for
3-level Glows with each depth (steps per level), median over repeats, and
the ratio to the shallowest. The steps of a level are scanned, so it should
stay flat in depth.
"""

import argparse
import statistics
import time

from zoo._runtime import malloc_tuned, reexec_with_malloc_tuning

reexec_with_malloc_tuning()  # as `python -m zoo.train` runs (ZOO_MALLOC_TUNING=0: without)

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import zoo  # noqa: E402
from zoo.train import TrainConfig  # noqa: E402
from zoo.train.loop import global_batch, init_opt_state, make_mesh, make_optimizer, make_train_step  # noqa: E402


def model_for(mixing):
    """The registered Glow configuration made for `mixing` (e.g. selfnorm_glow, whose
    loss trains with self-normalized gradients), else plain `glow` with that mixing."""
    from zoo_glow import GlowConfig

    for name in zoo.list_models():
        if name == "glow":
            continue
        try:
            cfg = zoo.get_model_config(name)
        except zoo.RegistryError:
            continue
        cfg = cfg() if isinstance(cfg, type) else cfg
        if isinstance(cfg, GlowConfig) and cfg.mixing == mixing:
            return name
    return "glow"


def make_model(mixing, *, levels, depth, width, shape, key):
    return zoo.create_model(model_for(mixing), key=key, input_shape=shape, levels=levels, depth=depth, width=width,
                            mixing=mixing)


def prepare(model, batch):
    """The model after data init and a maker of the trainer's own jitted step for
    it (training mode, Adam 1e-3, non-finite guard, after_update / after_step hooks)."""
    model = eqx.filter_jit(zoo.data_init)(model, batch)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    cfg = TrainConfig(lr=1e-3, batch_size=len(batch))
    opt = make_optimizer(cfg, steps_per_epoch=1, total_steps=1)
    mesh = make_mesh(jax.devices()[:1])
    return params, init_opt_state(opt, params), mesh, lambda: make_train_step(static, opt, mesh)


def bench_step(args):
    shape = (3, 32, 32)
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.uniform(size=(args.batch,) + shape), jnp.float32)
    registered = set(zoo.list_layers())
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; Glow {args.levels} levels x {args.depth} steps, "
          f"width {args.width}, input {shape}, batch {args.batch}; median of {args.repeats} steps; "
          f"glibc hugetlb malloc {'on' if malloc_tuned() else 'off'}\n")
    print(f"{'mixing':<20} {'model':<16} {'step ms':>9} {'min ms':>8} {'x first':>8}")
    base = None
    for mixing in args.mixing:
        if mixing not in registered:
            print(f"{mixing:<20} skipped: not a registered layer here")
            continue
        model = make_model(mixing, levels=args.levels, depth=args.depth, width=args.width, shape=shape,
                           key=jax.random.key(0))
        params, opt_state, mesh, make_step = prepare(model, xs)
        train_step = make_step()
        x, mask = global_batch(mesh, np.asarray(xs)), global_batch(mesh, np.ones(len(xs), bool))

        def step(params, opt_state, key, i):
            params, opt_state, metrics = train_step(params, opt_state, x, mask, key, i)
            return params, opt_state, metrics["loss"]

        key = jax.random.key(1)
        for i in range(3):  # compile + warm-up (the second call sees committed shardings)
            params, opt_state, loss = step(params, opt_state, key, jnp.int32(i))
        jax.block_until_ready(loss)
        times = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i), jnp.int32(i + 3))
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times) * 1e3
        base = base or t
        print(f"{mixing:<20} {model_for(mixing):<16} {t:>9.1f} {min(times) * 1e3:>8.1f} {t / base:>8.2f}"
              f"   (loss {float(loss):.1f})")


def bench_compile(args):
    shape = (3, 32, 32)
    xs = jnp.asarray(np.random.default_rng(0).uniform(size=(args.batch,) + shape), jnp.float32)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; Glow {args.levels} levels, width {args.width}, "
          f"mixing {args.mixing[0]}, batch {args.batch}; trace+lower+compile of one Adam step, "
          f"median of {args.repeats}\n")
    print(f"{'depth':>6} {'compile s':>10} {'x shallowest':>13}")
    base = None
    for depth in args.depths:
        model = make_model(args.mixing[0], levels=args.levels, depth=depth, width=args.width, shape=shape,
                           key=jax.random.key(0))
        params, opt_state, mesh, make_step = prepare(model, xs)
        x, mask = global_batch(mesh, np.asarray(xs)), global_batch(mesh, np.ones(len(xs), bool))
        times = []
        for _ in range(args.repeats):
            step = make_step()  # a fresh jit: no cache hit
            t0 = time.perf_counter()
            step.lower(params, opt_state, x, mask, jax.random.key(1), jnp.int32(0)).compile()
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        base = base or t
        print(f"{depth:>6} {t:>10.2f} {t / base:>13.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["step", "compile"])
    parser.add_argument("--mixing", nargs="+", default=["conv1x1", "selfnorm_conv1x1"],
                        help="registered mixing-layer names (compile uses the first)")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 30 if args.what == "step" else 3
    (bench_step if args.what == "step" else bench_compile)(args)


if __name__ == "__main__":
    main()
