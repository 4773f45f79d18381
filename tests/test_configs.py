"""Every preset in configs/ parses, builds its model at full size and traces
one training step of it (data init, loss, gradients, the preset's own
optimizer) by `eqx.filter_eval_shape`: every shape is checked, nothing is
compiled or run. Each architecture the presets use then takes two real
training steps (the trainer's own jitted step) at the config's small example
sizes on fake data of its dataset's kind; presets that differ only in sizes
and optimizer settings share one compiled step. No download, no evaluation
or sampling (the trainer tests cover those)."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.train.cli import list_presets, load_preset, parse
from zoo.train.loop import global_batch, init_opt_state, make_mesh, make_optimizer, make_train_step


def test_there_are_presets():
    assert {"quickstart", "selfnorm_fc_mnist", "conv1x1_glow_cifar", "planar_vae_k10"} <= set(list_presets())


def _is_float_struct(a) -> bool:
    return isinstance(a, jax.ShapeDtypeStruct) and jnp.issubdtype(a.dtype, jnp.inexact)


@pytest.mark.parametrize("preset", list_presets())
def test_preset_traces_a_full_size_training_step(preset):
    _, model_cfg, data, cfg = parse(["--config", preset])
    shape = tuple(zoo.get_dataset(data).shape)
    x, mask = jax.ShapeDtypeStruct((2, *shape), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.bool_)
    net = eqx.filter_eval_shape(model_cfg.build, input_shape=shape, key=jax.random.key(0))
    labels = {"condition": jax.ShapeDtypeStruct((2,), jnp.int32)} if cfg.conditional else {}
    net = eqx.filter_eval_shape(zoo.data_init, net, x, **labels)
    x = (x, labels["condition"]) if cfg.conditional else x
    params, static = eqx.partition(net, _is_float_struct)
    # integer arrays (permutations, masks) are constants of the step, as in the trainer
    static = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype) if isinstance(a, jax.ShapeDtypeStruct) else a, static)
    assert sum(np.prod(a.shape) for a in jax.tree.leaves(params)) > 0
    optimizer = make_optimizer(cfg, steps_per_epoch=10, total_steps=100)
    opt_state = eqx.filter_eval_shape(init_opt_state, optimizer, params)
    step = make_train_step(static, optimizer, make_mesh())
    new_params, _, metrics = eqx.filter_eval_shape(step, params, opt_state, x, mask, jax.random.key(1),
                                                   jnp.asarray(1, jnp.int32))
    assert jax.tree.structure(new_params) == jax.tree.structure(params)
    assert all(a.shape == b.shape and a.dtype == b.dtype
               for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)))
    assert metrics["loss"].shape == ()


def _small_overrides(model_cfg) -> dict:
    """The config's example sizes, never above the preset's own (flow_length 0 stays 0)."""
    def pick(name, small):
        full = getattr(model_cfg, name)
        return min(full, small) if type(small) is int and type(full) is int else small

    return {k: pick(k, v) for k, v in getattr(type(model_cfg), "example_overrides", {}).items()}


def _data_kind(source) -> str:
    if np.dtype(source.dtype) != np.uint8:
        return "vector"
    return "binary" if (source.binary or source.binarize) else "8-bit"


def _architecture(preset: str) -> str:
    """What a two-step run depends on: model, its small config, the data's kind and the optimizer's code path."""
    p = load_preset(preset)
    model_cfg = dataclasses.replace(zoo.get_model_config(p["model"]), **p.get("model_cfg", {}))
    model_cfg = dataclasses.replace(model_cfg, **_small_overrides(model_cfg))
    train = p.get("train", {})
    optimizer = (train.get("optimizer", "adam"), train.get("momentum", 0) > 0, train.get("grad_clip_norm") is not None)
    kind = _data_kind(zoo.get_dataset(p["data"]))
    return json.dumps([p["model"], dataclasses.asdict(model_cfg), kind, optimizer], sort_keys=True)


ARCHITECTURES: dict[str, list[str]] = {}
for _preset in list_presets():
    ARCHITECTURES.setdefault(_architecture(_preset), []).append(_preset)


def _fake_batch(kind, shape, n, rng):
    if kind == "vector":
        return rng.standard_normal((n, *shape)).astype(np.float32)
    top = 2 if kind == "binary" else 256
    x = rng.integers(0, top, (n, *shape)).astype(np.float32)
    return x if top == 2 else (x + rng.random(x.shape, dtype=np.float32)) / 256.0


@pytest.mark.parametrize("presets", list(ARCHITECTURES.values()), ids=["+".join(p) for p in ARCHITECTURES.values()])
def test_architecture_trains_two_small_steps(presets):
    _, model_cfg, data, cfg = parse(["--config", presets[0]])
    model_cfg = dataclasses.replace(model_cfg, **_small_overrides(model_cfg))
    kind, shape = _data_kind(zoo.get_dataset(data)), tuple(type(model_cfg).example_input_shape)
    rng = np.random.default_rng(0)
    mesh = make_mesh()
    net = model_cfg.build(input_shape=shape, key=jax.random.key(0))
    labels = (lambda n: {"condition": global_batch(mesh, np.arange(n, dtype=np.int32) % model_cfg.condition_shape[0])}
              if cfg.conditional else {})
    net = eqx.filter_jit(zoo.data_init)(net, global_batch(mesh, _fake_batch(kind, shape, 4, rng)), **labels(4))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    optimizer = make_optimizer(cfg, steps_per_epoch=2, total_steps=2)
    step = make_train_step(static, optimizer, mesh)
    opt_state = init_opt_state(optimizer, params)
    before = [np.asarray(a).copy() for a in jax.tree.leaves(params)]
    mask = np.ones(2, bool)
    for i in range(1, 3):
        x = global_batch(mesh, _fake_batch(kind, shape, 2, rng))
        x = (x, labels(2)["condition"]) if cfg.conditional else x
        params, opt_state, metrics = step(params, opt_state, x, global_batch(mesh, mask), jax.random.key(i),
                                          jnp.asarray(i, jnp.int32))
        assert np.isfinite(float(metrics["loss"])), (presets, i, metrics)
        assert int(metrics["nonfinite"]) == 0, (presets, i)
    after = jax.tree.leaves(params)
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(before, after)), "no parameter changed"
    # the state a step returns has the types it was given (no weak-typed init): one compile per run
    assert step.jitted._cache_size() == 1, f"{presets}: the train step compiled {step.jitted._cache_size()} times"


def test_every_preset_is_in_one_architecture():
    grouped = [p for group in ARCHITECTURES.values() for p in group]
    assert sorted(grouped) == list_presets()
    # sizes do not split an architecture: the CIFAR and ImageNet Glows (3 x 32 and 3 x 48, width 512) share one
    assert any({"conv1x1_glow_cifar", "conv1x1_glow_imagenet"} <= set(g) for g in ARCHITECTURES.values())
