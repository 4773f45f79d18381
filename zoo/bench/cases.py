"""The benchmark's cases: what each one builds and times.

A case runs in its own fresh interpreter (`python -m zoo.bench --run-case
NAME`) and returns a JSON-able dict. Four kinds:

- "model": a registered family at a configs/ preset's sizes (MNIST shape,
  batch 100; the small Glow at 3 x 32 x 32, batch 64): the trainer's step,
  `log_prob` and `sample` of a batch, and, for one case per family, the
  step's compile time at a shallow and a deep setting of its depth field.
- "vector": RealNVP, MAF, NSF and a planar flow at D = 16 and 64, batch 100,
  with their flowjax twins timed in turn with zoo's when flowjax is
  importable: the same hand-written step, each library's own step,
  `log_prob` and `sample`.
- "timescaling": self-normalized vs exact FC step time as D grows (one
  layer, the snf_timescaling preset), the two timed in turn.
- "pipeline": `zoo.data.pipeline`'s time per batch against the training
  step that consumes it.

`--quick` shrinks every size (8 x 8 images, batch 8, two layers of width 8)
so that the command tests itself in seconds; its numbers mean nothing.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Settings", "Case", "CASES", "QUICK_CASES", "VECTOR_BATCH"]

VECTOR_BATCH = 100  # the MNIST cases' batch, and flowjax fit_to_data's default
VECTOR_DIMS = (16, 64)
PLANAR_LAYERS = 10  # as the planar VAE preset planar_vae_k10
TIMESCALING_DIMS = (256, 1024, 4064)  # 4064: the largest D of the SNF paper's Figure 4


@dataclass(frozen=True)
class Settings:
    """How long to time: at least `steps` calls of each kind and `min_seconds`
    of them in total; compile depth ratios from at least `compile_repeats` paired rounds."""

    quick: bool = False
    steps: int = 20
    min_seconds: float = 0.5
    compile_repeats: int = 1  # a CNN family's step takes ~15 s to compile: few rounds keep the run in 20 min


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    about: str
    run: Callable[[Settings], dict]


# --------------------------------------------------------------------------- shared pieces


def _measure(thunk, s: Settings) -> dict:
    return _side_by_side({"one": thunk}, s)["one"]


def _side_by_side(thunks: dict, s: Settings) -> dict:
    """{name: summary}: every thunk warmed up first (see `stats.warm_up`), then all
    timed in turn. compile_s = the warm-up minus as many median calls: tracing
    and compiling; compiles = the programs compiled, where the thunk can tell."""
    from zoo.bench.stats import interleaved, summarize, warm_up

    warm = {name: warm_up(t, getattr(t, "compiles", None)) for name, t in thunks.items()}
    times = interleaved(thunks, steps=s.steps, min_seconds=s.min_seconds)
    out = {}
    for name, ts in times.items():
        summary = summarize(ts)
        seconds, calls = warm[name]
        out[name] = {**summary, "warm_up_s": seconds, "warm_up_calls": calls,
                     "compile_s": max(seconds - calls * summary["median_ms"] / 1e3, 0.0)}
        if hasattr(thunks[name], "compiles"):
            out[name]["compiles"] = thunks[name].compiles()
    return out


def _quick_shape(shape):
    return (shape[0], 8, 8) if len(shape) == 3 else shape


def _finite_loss(metrics) -> float:
    loss = float(metrics["loss"])
    return loss if math.isfinite(loss) else None


# --------------------------------------------------------------------------- model cases

# --quick: the smallest sizes each family builds with on 8 x 8 images
QUICK_MODEL_CFG = {
    "cnn": {"layers_per_block": 1},
    "glow": {"levels": 1, "depth": 1, "width": 8},
    "planar_vae": {"hidden": 16, "latent_dim": 4, "maxout_window": 2, "flow_length": 2, "num_importance": 4,
                   "eval_chunk": 2},
    "vector": {"num_layers": 2, "width": 8},
}


def _quick_cfg(model: str) -> dict:
    for key in ("cnn", "glow", "planar_vae"):
        if key in model:
            return QUICK_MODEL_CFG[key]
    return {}


@dataclass(frozen=True)
class ModelSpec:
    """A preset (configs/NAME.toml), optionally for another `model` with explicit
    `model_cfg` sizes, at `batch` (default the preset's); `compile_depth` =
    (field, shallow, deep) when this case also times compiling at two depths."""

    preset: str
    name: str | None = None
    model: str | None = None
    model_cfg: dict = field(default_factory=dict)
    batch: int | None = None
    compile_depth: tuple | None = None
    # rounds of (shallow, deep) compiles, the ratio their median (a CNN step compiles in ~15 s):
    # one compile of emerging_cnn gave 1.25 deep/shallow twice, the best of 3 gave 1.03
    compile_repeats: int = 1

    @property
    def case_name(self) -> str:
        return self.name or self.preset


MODEL_SPECS = [
    # 4 -> 16: two dense layers are not stacked (one (dense, activation) block is no run), so 2 -> 8
    # compares unrolled with scanned code, not depths
    ModelSpec("selfnorm_fc_mnist", compile_depth=("num_layers", 4, 16), compile_repeats=3),
    ModelSpec("exact_fc_mnist", compile_depth=("num_layers", 4, 16), compile_repeats=3),
    ModelSpec("selfnorm_cnn_mnist", compile_depth=("layers_per_block", 3, 12), compile_repeats=2),
    ModelSpec("exact_cnn_mnist", compile_depth=("layers_per_block", 3, 12), compile_repeats=2),
    ModelSpec("emerging_cnn_mnist", compile_depth=("layers_per_block", 3, 12), compile_repeats=2),
    ModelSpec("exponential_cnn_mnist", compile_depth=("layers_per_block", 3, 12), compile_repeats=2),
    ModelSpec("glow_mnist", batch=100),
    ModelSpec("selfnorm_glow_mnist", compile_depth=("depth", 4, 16)),
    ModelSpec("glow_cifar_small", compile_depth=("depth", 8, 32)),
    ModelSpec("glow_cifar_small", name="selfnorm_glow_cifar_small", model="selfnorm_glow",
              model_cfg={"levels": 3, "depth": 8, "width": 64}),
    ModelSpec("planar_vae_k10", compile_depth=("flow_length", 10, 40)),
    ModelSpec("planar_vae_k40"),
]


def _preset(spec: ModelSpec, s: Settings):
    """(model name, model config, data name, TrainConfig, input shape, batch) of
    the preset as `python -m zoo.train --config PRESET` reads it."""
    import zoo
    from zoo.train.cli import parse

    argv = ["--config", spec.preset] + (["--model", spec.model] if spec.model else [])
    model, cfg, data, train_cfg = parse(argv)
    overrides = dict(spec.model_cfg)
    shape, batch = tuple(zoo.get_dataset(data).shape), spec.batch or train_cfg.batch_size
    if s.quick:
        overrides.update(_quick_cfg(model))
        shape, batch = _quick_shape(shape), 8
    return model, dataclasses.replace(cfg, **overrides), data, train_cfg, shape, batch


def _compile_depth(cfg, depth, optimizer, x, shape, s: Settings, pairs: int | None = None) -> dict:
    """Compile CPU time at the shallow and deep setting of `depth` in `pairs` rounds
    (default `s.compile_repeats`) of one compile each, taken back to back
    (`measure.compile_pairs`): the ratio is the median of the rounds' deep / shallow,
    the seconds the best of each setting."""
    import statistics

    import jax

    from zoo.bench.measure import compile_pairs

    field_name, shallow, deep = (depth[0], 1, 2) if s.quick else depth
    pairs = 1 if s.quick else max(pairs or 1, s.compile_repeats)
    rounds = compile_pairs(
        lambda v: dataclasses.replace(cfg, **{field_name: v}).build(input_shape=shape, key=jax.random.key(0)),
        (shallow, deep), optimizer, x, pairs=pairs)
    return {"field": field_name, "shallow": shallow, "deep": deep, "repeats": pairs,
            "shallow_s": min(r[shallow] for r in rounds), "deep_s": min(r[deep] for r in rounds),
            "rounds": [[r[shallow], r[deep]] for r in rounds],
            "ratio": statistics.median(r[deep] / r[shallow] for r in rounds)}


def run_model(spec: ModelSpec, s: Settings) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import zoo
    from zoo.bench.measure import count_params, image_batch, log_prob, sample, train_step
    from zoo.train.loop import make_optimizer

    model_name, cfg, data, train_cfg, shape, batch = _preset(spec, s)
    x = image_batch(data, shape, batch)
    model = eqx.filter_jit(zoo.data_init)(cfg.build(input_shape=shape, key=jax.random.key(0)), jnp.asarray(x))
    optimizer = make_optimizer(train_cfg, steps_per_epoch=1, total_steps=1)
    step = train_step(model, optimizer, x, ahead_of_time=True)
    timings = {"train_step": {**_measure(step, s), "compile_cpu_s": step.compile_cpu_s}, "log_prob": _measure(log_prob(model, x), s),
               "sample": _measure(sample(model, batch), s)}
    out = {"model": model_name, "preset": spec.preset, "model_cfg": dataclasses.asdict(cfg), "data": data,
           "input_shape": list(shape), "batch": batch, "optimizer": train_cfg.optimizer,
           "params": count_params(eqx.filter(model, eqx.is_inexact_array)), "timings": timings,
           "loss": _finite_loss(step.metrics())}
    if spec.compile_depth:
        out["compile_depth"] = _compile_depth(cfg, spec.compile_depth, optimizer, x, shape, s,
                                              pairs=spec.compile_repeats)
    return out


# --------------------------------------------------------------------------- vector cases (zoo and flowjax)


@dataclass(frozen=True)
class PlanarFlowConfig:
    """A planar flow for densities: `num_layers` x (Planar in the density direction,
    random permutation) over a standard normal, flowjax's planar_flow in zoo's layers."""

    num_layers: int = PLANAR_LAYERS

    def build(self, *, input_shape, key):
        import jax

        from zoo.bijections import Chain, Permute
        from zoo.distributions import StandardNormal
        from zoo.flow import Flow
        from zoo_planar_vae.flows import Planar

        layers = []
        for k in jax.random.split(key, self.num_layers):
            k1, k2 = jax.random.split(k)
            layers += [Planar(input_shape, key=k1, direction="density"), Permute(input_shape, key=k2)]
        return Flow(Chain(layers), StandardNormal(input_shape))


def _vector_cfg(family: str, s: Settings):
    """zoo's config: the registered defaults without ActNorm (flowjax's flows have
    none, so both sides compute the same layers)."""
    import zoo

    if family == "planar":
        cfg = PlanarFlowConfig()
        return dataclasses.replace(cfg, num_layers=2) if s.quick else cfg
    cfg = dataclasses.replace(zoo.get_model_config(family), actnorm=False)
    return dataclasses.replace(cfg, **QUICK_MODEL_CFG["vector"]) if s.quick else cfg


def _flowjax():
    """The twin module, or (None, why not)."""
    try:
        from zoo.bench import vs_flowjax
    except ImportError as e:
        return None, f"flowjax is not importable ({type(e).__name__}: {e})"
    return vs_flowjax, None


def run_vector(family: str, dim: int, time_compile: bool, s: Settings) -> dict:
    import equinox as eqx
    import jax
    import optax

    from zoo.bench import measure
    from zoo.bench.stats import ratio
    from zoo.train import TrainConfig
    from zoo.train.loop import make_optimizer

    cfg = _vector_cfg(family, s)
    batch = 8 if s.quick else VECTOR_BATCH
    x = measure.vector_batch(dim, batch)
    model = cfg.build(input_shape=(dim,), key=jax.random.key(0))
    lr = 1e-3
    zoo_thunks = {
        "hand_step": measure.hand_step(model, measure.zoo_nll, x, lr=lr),
        "train_step": measure.train_step(model, make_optimizer(TrainConfig(lr=lr, batch_size=batch),
                                                               steps_per_epoch=1, total_steps=1), x,
                                         ahead_of_time=True),
        "log_prob": measure.log_prob(model, x),
        "sample": measure.sample(model, batch),
    }
    out = {"model": family, "model_cfg": dataclasses.asdict(cfg), "input_shape": [dim], "batch": batch,
           "optimizer": "adam", "params": measure.count_params(eqx.filter(model, eqx.is_inexact_array))}
    fj, why_not = _flowjax()
    timings, flowjax = {}, None
    if fj is None:
        timings = {what: _measure(t, s) for what, t in zoo_thunks.items()}
        out["flowjax_skipped"] = why_not
    else:
        dist = fj.twin(family, cfg, dim, jax.random.key(0))
        spec, is_leaf = fj.partition_spec()
        fj_thunks = {
            "hand_step": measure.hand_step(dist, fj.nll, x, lr=lr, filter_spec=spec, is_leaf=is_leaf),
            "train_step": fj.train_step(dist, optax.adam(lr), x),
            "log_prob": fj.log_prob(dist, x),
            "sample": None if family in fj.SAMPLE_UNSUPPORTED else fj.sample(dist, batch),
        }
        flowjax = {"params": measure.count_params(eqx.filter(dist, spec, is_leaf=is_leaf)), "timings": {},
                   "ratios": {}, "unsupported": {}}
        for what, zoo_thunk in zoo_thunks.items():
            if fj_thunks[what] is None:
                timings[what] = _measure(zoo_thunk, s)
                flowjax["unsupported"][what] = fj.SAMPLE_UNSUPPORTED[family]
                continue
            both = _side_by_side({"zoo": zoo_thunk, "flowjax": fj_thunks[what]}, s)
            timings[what], flowjax["timings"][what] = both["zoo"], both["flowjax"]
            flowjax["ratios"][what] = ratio(both["zoo"], both["flowjax"])
        import importlib.metadata

        flowjax["version"] = importlib.metadata.version("flowjax")
    timings["train_step"]["compile_cpu_s"] = zoo_thunks["train_step"].compile_cpu_s
    out["timings"] = timings
    if flowjax is not None:
        out["flowjax"] = flowjax
    if time_compile:  # from the default number of layers to 4x
        optimizer = make_optimizer(TrainConfig(lr=lr, batch_size=batch), steps_per_epoch=1, total_steps=1)
        depth = ("num_layers", cfg.num_layers, 4 * cfg.num_layers)
        out["compile_depth"] = _compile_depth(cfg, depth, optimizer, x, (dim,), s, pairs=3)  # ~2-3 s a compile
    return out


# --------------------------------------------------------------------------- time scaling


def run_timescaling(s: Settings) -> dict:
    """selfnorm_fc vs exact_fc, one D x D layer each (the snf_timescaling preset:
    batch 128, Adam 1e-4) on 1 x 1 x D inputs, the trainer's steps timed in turn."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import zoo
    from zoo.bench.measure import image_batch, train_step
    from zoo.bench.stats import ratio
    from zoo.train.cli import parse
    from zoo.train.loop import make_optimizer

    snf_name, snf_cfg, data, train_cfg = parse(["--config", "snf_timescaling"])
    exact_name, exact_cfg, _, _ = parse(["--config", "snf_timescaling", "--model", "exact_fc"])
    exact_cfg = dataclasses.replace(exact_cfg, num_layers=snf_cfg.num_layers)
    batch = 8 if s.quick else train_cfg.batch_size
    optimizer = make_optimizer(train_cfg, steps_per_epoch=1, total_steps=1)
    rows = []
    for d in (16,) if s.quick else TIMESCALING_DIMS:
        shape = (1, 1, d)
        x = image_batch(data, shape, batch)
        thunks = {}
        for name, cfg in ((snf_name, snf_cfg), (exact_name, exact_cfg)):
            model = cfg.build(input_shape=shape, key=jax.random.key(0))
            thunks[name] = train_step(eqx.filter_jit(zoo.data_init)(model, jnp.asarray(x)), optimizer, x)
        both = _side_by_side(thunks, s)
        rows.append({"D": d, "timings": both, "ratio": ratio(both[snf_name], both[exact_name])})
    return {"model": f"{snf_name} vs {exact_name}", "preset": "snf_timescaling", "layers": snf_cfg.num_layers,
            "batch": batch, "optimizer": train_cfg.optimizer, "pair": [snf_name, exact_name], "rows": rows}


# --------------------------------------------------------------------------- input pipeline


def run_pipeline(kind: str, s: Settings) -> dict:
    """The pipeline's batch time, on demand (prefetch=0: the cost of building
    one) and prefetched (what a loop asking back to back waits), against the
    training step of the preset the data feeds: MNIST -> quickstart (the bare
    `python -m zoo.train`), CIFAR-shaped random images with flips -> glow_cifar_small."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import zoo
    from zoo.bench.measure import train_step
    from zoo.bench.stats import ratio
    from zoo.data import pipeline
    from zoo.train.cli import parse
    from zoo.train.loop import make_optimizer

    preset = "quickstart" if kind == "mnist_bundled" else "glow_cifar_small"
    model_name, cfg, data, train_cfg = parse(["--config", preset])
    batch = 8 if s.quick else train_cfg.batch_size
    if kind == "mnist_bundled":
        source, options, label = "mnist_bundled", {}, "mnist_bundled (train split)"
    else:
        n, hw = (256, 8) if s.quick else (10_000, 32)
        source = np.random.default_rng(0).integers(0, 256, (n, 3, hw, hw), dtype=np.uint8)
        options, label = {"flip": True}, f"{n} random uint8 3x{hw}x{hw} images, flips"
    if s.quick:
        cfg = dataclasses.replace(cfg, **_quick_cfg(model_name))

    def batches(prefetch):
        it = pipeline(source, split="train", batch_size=batch, seed=0, prefetch=prefetch, **options).iterator()
        for _ in range(5):  # the thread's start and the first shuffle block
            next(it)
        return lambda: next(it)

    timings = {"batch_on_demand": _measure(batches(0), s), "batch_prefetched": _measure(batches(2), s)}
    x = next(iter(pipeline(source, split="train", batch_size=batch, seed=0, **options)))["x"]
    shape = tuple(x.shape[1:])
    if s.quick and kind == "mnist_bundled":
        shape, x = (1, 8, 8), x[:, :, :8, :8]
    model = eqx.filter_jit(zoo.data_init)(cfg.build(input_shape=shape, key=jax.random.key(0)), jnp.asarray(x))
    timings["train_step"] = _measure(train_step(model, make_optimizer(train_cfg, steps_per_epoch=1,
                                                                      total_steps=1), x), s)
    return {"model": model_name, "preset": preset, "data": label, "input_shape": list(shape), "batch": batch,
            "timings": timings,
            "ratios": {"step_per_batch": ratio(timings["train_step"], timings["batch_on_demand"]),
                       "step_per_batch_prefetched": ratio(timings["train_step"], timings["batch_prefetched"])}}


# --------------------------------------------------------------------------- the registry of cases


def _cases() -> dict:
    cases = {}
    for spec in MODEL_SPECS:
        sizes = ", ".join(f"{k} {v}" for k, v in spec.model_cfg.items())
        about = (f"{spec.model} at preset {spec.preset}'s sizes ({sizes})" if spec.model else f"preset {spec.preset}")
        about += f", batch {spec.batch}" if spec.batch else ""
        cases[spec.case_name] = Case(spec.case_name, "model", about, lambda s, spec=spec: run_model(spec, s))
    for family in ("realnvp", "maf", "nsf", "planar"):
        for dim in VECTOR_DIMS:
            name = f"{family}_d{dim}"
            cases[name] = Case(name, "vector", f"{family}, D = {dim}, batch {VECTOR_BATCH}, vs flowjax",
                               lambda s, f=family, d=dim: run_vector(f, d, d == VECTOR_DIMS[0], s))
    cases["fc_timescaling"] = Case("fc_timescaling", "timescaling",
                                   "selfnorm_fc vs exact_fc step time, one layer, D = "
                                   + ", ".join(map(str, TIMESCALING_DIMS)), run_timescaling)
    for kind in ("mnist_bundled", "cifar10"):
        name = f"pipeline_{kind}"
        cases[name] = Case(name, "pipeline", f"zoo.data.pipeline batch vs training step ({kind})",
                           lambda s, k=kind: run_pipeline(k, s))
    return cases


CASES = _cases()
# --quick without --cases: one case of each kind
QUICK_CASES = ("exact_fc_mnist", "realnvp_d16", "fc_timescaling", "pipeline_mnist_bundled")
