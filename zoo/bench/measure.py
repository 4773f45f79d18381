"""The calls a case times, each a thunk that blocks until its result is ready.

Every timed function takes the parameters as an argument and closes over
the static rest of the model (`eqx.partition`), so a call pays for the
computation and one dispatch, not for flattening a module: that is how the
trainer calls its step, and it keeps zoo and flowjax on equal terms.
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import zoo
from zoo.flow import call_with_key
from zoo.train.loop import global_batch, init_opt_state, make_mesh, make_train_step

__all__ = ["count_params", "image_batch", "vector_batch", "train_step", "hand_step", "log_prob", "sample",
           "compile_pairs"]


def count_params(params) -> int:
    return int(sum(a.size for a in jax.tree.leaves(params)))


def image_batch(data: str, shape, batch: int, *, seed: int = 0) -> np.ndarray:
    """A float32 batch as the dataset's pipeline gives it: the bundled MNIST
    images at MNIST's shape (random 8-bit images at any other), uniformly
    dequantized to [0, 1), or Bernoulli(k / 255) pixels for binarized data."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    if shape == (1, 28, 28):
        images = zoo.load_dataset("mnist_bundled", split="train")[:batch]
    else:
        images = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
    source = zoo.get_dataset(data)
    if source.binary or source.binarize is not None:
        return (rng.random(images.shape) < images / 255.0).astype(np.float32)
    return ((images + rng.random(images.shape)) / 256.0).astype(np.float32)


def vector_batch(dim: int, batch: int, *, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, dim)).astype(np.float32)


def train_step(model, optimizer, x, *, seed: int = 0, ahead_of_time: bool = False):
    """The trainer's own jitted step (`zoo.train.loop.make_train_step`: training-mode
    loss, gradients, the optimizer, the non-finite guard and the models' hooks) on a
    one-device mesh, as a thunk; `thunk.metrics()` holds the last call's metrics.
    With `ahead_of_time` the step is lowered and compiled first and that executable
    is called: `thunk.compile_cpu_s` is its CPU time, as `compile_pairs` counts."""
    mesh = make_mesh(jax.devices()[:1])
    params, static = eqx.partition(model, eqx.is_inexact_array)
    step = make_train_step(static, optimizer, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params, opt_state = jax.device_put((params, init_opt_state(optimizer, params)), replicated)
    state = {"params": params, "opt": opt_state, "i": 0, "metrics": None}
    xs, mask = global_batch(mesh, x), global_batch(mesh, np.ones(len(x), bool))
    key = jax.random.key(seed)
    fn = step
    if ahead_of_time:
        fn, compile_cpu_s = _timed_compile(step, params, opt_state, xs, mask, key, jnp.int32(0))

    def call():
        state["params"], state["opt"], state["metrics"] = fn(state["params"], state["opt"], xs, mask, key,
                                                              jnp.int32(state["i"]))
        jax.block_until_ready((state["params"], state["metrics"]))
        state["i"] += 1

    call.metrics = lambda: state["metrics"]
    if ahead_of_time:
        call.compile_cpu_s = compile_cpu_s
    else:
        call.compiles = getattr(step.jitted, "_cache_size", lambda: None)  # programs compiled so far (jax-private)
    return call


def hand_step(model, nll, x, *, lr: float = 1e-3, filter_spec=eqx.is_inexact_array, is_leaf=None):
    """The same hand-written step for any library: `jit((params, opt_state, x) ->
    (params, opt_state, loss))` with `eqx.partition`, `optax.adam(lr)` and
    `value_and_grad` of `nll(model, x)`, the batch's mean negative log-likelihood."""
    params, static = eqx.partition(model, filter_spec, is_leaf=is_leaf)
    optimizer = optax.adam(lr)

    @jax.jit
    def step(params, opt_state, x):
        loss, grads = jax.value_and_grad(lambda p: nll(eqx.combine(p, static), x))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = {"params": params, "opt": optimizer.init(params)}
    x = jnp.asarray(x)

    def call():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], x)
        jax.block_until_ready((state["params"], loss))

    return call


def zoo_nll(model, x):
    return -jnp.mean(jax.vmap(model.log_prob)(x))


def _jit_on_params(model, fn, filter_spec=eqx.is_inexact_array, is_leaf=None):
    params, static = eqx.partition(model, filter_spec, is_leaf=is_leaf)
    jitted = jax.jit(lambda p, *args: fn(eqx.combine(p, static), *args))
    return lambda *args: jitted(params, *args)


def log_prob(model, x, *, seed: int = 0):
    """`jit(vmap(model.log_prob))` on the batch (importance-sampled models get one key per example)."""
    keys = jax.random.split(jax.random.key(seed), len(x))
    fn = _jit_on_params(model, lambda m, x, keys: jax.vmap(lambda xi, ki: call_with_key(m.log_prob, xi, key=ki))(
        x, keys))
    x = jnp.asarray(x)
    return lambda: jax.block_until_ready(fn(x, keys))


def sample(model, num: int, *, seed: int = 0):
    """`jit(vmap(model.sample))` over `num` keys, as `zoo.sample` draws."""
    keys = jax.random.split(jax.random.key(seed), num)
    fn = _jit_on_params(model, lambda m, keys: jax.vmap(m.sample)(keys))
    return lambda: jax.block_until_ready(fn(keys))


def _timed_compile(step, *args):
    """`step` (from `make_train_step`) lowered and compiled for `args`, and the CPU
    seconds that took (this process, all threads): the one way both the cases'
    ahead-of-time step and `compile_pairs` count a compile."""
    t0 = time.process_time()
    compiled = step.jitted.lower(*args).compile()
    return compiled, time.process_time() - t0


def compile_pairs(build, values, optimizer, x, *, pairs: int) -> list[dict]:
    """[{value: seconds}, ...]: `pairs` rounds, each compiling the trainer's step for
    the models `build(value)` of both `values` back to back (a fresh jit each, no
    cache hit: the persistent compilation cache is off in a case process), the
    order alternating from round to round, the second value first. Seconds are CPU
    time of trace + lower + compile (this process, all threads): on shared cores
    another process stretches the wall time of a compile by up to 2x but hardly its
    CPU time. The two compiles of a round are taken together so that their ratio
    is not skewed by a machine that slows down or speeds up during the case (the
    best of each value over the whole case once gave nsf 1.47 where its paired
    compiles gave 0.94-1.01 in eight rounds)."""
    mesh = make_mesh(jax.devices()[:1])
    xs, mask = global_batch(mesh, x), global_batch(mesh, np.ones(len(x), bool))
    models = {v: eqx.partition(build(v), eqx.is_inexact_array) for v in values}
    rounds = []
    for r in range(pairs):
        seconds = {}
        for v in (values[::-1] if r % 2 == 0 else values):
            params, static = models[v]
            step = make_train_step(static, optimizer, mesh)
            _, seconds[v] = _timed_compile(step, params, init_opt_state(optimizer, params), xs, mask,
                                           jax.random.key(0), jnp.int32(0))
        rounds.append(seconds)
    return rounds
