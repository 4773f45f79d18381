"""Every preset in configs/ parses, builds its model at full size, and takes
two training steps (the trainer's own jitted step and optimizer) on tiny fake
data of its dataset's shape: no download, no evaluation or sampling (the
trainer tests cover those)."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.train.cli import list_presets, parse
from zoo.train.loop import global_batch, make_mesh, make_optimizer, init_opt_state, make_train_step


def test_there_are_presets():
    assert {"quickstart", "selfnorm_fc_mnist", "conv1x1_glow_cifar", "planar_vae_k10"} <= set(list_presets())


def _fake_batch(source, n, rng):
    if np.dtype(source.dtype) == np.uint8:
        top = 2 if (source.binary or source.binarize) else 256
        x = rng.integers(0, top, (n, *source.shape)).astype(np.float32)
        return x if top == 2 else (x + rng.random(x.shape, dtype=np.float32)) / 256.0
    return rng.standard_normal((n, *source.shape)).astype(np.float32)


@pytest.mark.parametrize("preset", list_presets())
def test_preset_builds_and_trains_two_steps(preset):
    model_name, model_cfg, data, cfg = parse(["--config", preset])
    source = zoo.get_dataset(data)
    rng = np.random.default_rng(0)
    mesh = make_mesh()
    net = model_cfg.build(input_shape=tuple(source.shape), key=jax.random.key(0))
    net = eqx.filter_jit(zoo.data_init)(net, global_batch(mesh, _fake_batch(source, 4, rng)))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    optimizer = make_optimizer(cfg, steps_per_epoch=2, total_steps=2)
    step = make_train_step(static, optimizer, mesh)
    opt_state = init_opt_state(optimizer, params)
    before = [np.asarray(a).copy() for a in jax.tree.leaves(params)]
    mask = np.ones(2, bool)
    for i in range(1, 3):
        params, opt_state, metrics = step(params, opt_state, global_batch(mesh, _fake_batch(source, 2, rng)),
                                          global_batch(mesh, mask), jax.random.key(i), jnp.asarray(i, jnp.int32))
        assert np.isfinite(float(metrics["loss"])), (preset, i, metrics)
        assert int(metrics["nonfinite"]) == 0, (preset, i)
    after = jax.tree.leaves(params)
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(before, after)), "no parameter changed"
