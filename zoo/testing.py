"""Conformance checks for any bijection or flow: ours and plugin authors'.

    from zoo.testing import check_bijection, check_flow
    check_bijection(MyLayer((4,), key=key), x)   # x: one unbatched example
    check_flow(my_model, x)

Checks run in float64 on a copy whose parameters are randomly perturbed
(`perturb`), so zero-initialised layers are not tested as the identity.
Each failure raises `AssertionError` saying which property broke.

Conditional layers and models (p(x | y)) are checked under a condition:
`check_bijection(layer, x, condition=c)`; `check_flow` on a model with a
`condition_shape` runs every check under two different conditions itself.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from zoo.flow import call_with_key, encode_condition

__all__ = ["check_bijection", "check_flow", "brute_force_logdet", "example_input"]


def example_input(layer, shape=None, *, key=None):
    """A random example for `layer` (a class or instance): standard normal,
    or uniform inside the layer's `domain` ClassVar (e.g. (0, 1) for Logit)."""
    shape = tuple(shape if shape is not None else layer.example_shape)
    key = jax.random.key(1) if key is None else key
    domain = getattr(layer, "domain", None)
    if domain is None:
        return jax.random.normal(key, shape)
    lo, hi = domain
    pad = 0.05 * (hi - lo)
    return jax.random.uniform(key, shape, minval=lo + pad, maxval=hi - pad)


# _to64 and _perturb work in NumPy, then transfer once per leaf: jax would compile a
# cast, a multiply and an add per parameter shape. The same IEEE operations, so the same values.
def _to64(tree):
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)) if eqx.is_inexact_array(a) else a, tree)


def _perturb(tree, scale, key):
    if not scale:
        return tree
    params, static = eqx.partition(tree, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    leaves = [jnp.asarray(_noisy(np.asarray(a), scale, rng)) for a in leaves]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _noisy(a: np.ndarray, scale: float, rng) -> np.ndarray:
    noise = rng.standard_normal(a.shape).astype(a.dtype)
    return (a + np.asarray(scale, a.dtype) * noise).astype(a.dtype)


def _close(name, got, want, rtol, atol):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape} != expected {want.shape}")
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        err = np.max(np.abs(got - want))
        raise AssertionError(f"{name}: max abs error {err:.3g} (rtol={rtol}, atol={atol})\n got {got}\nwant {want}")


def _finite(name, tree):
    bad = [a for a in jax.tree.leaves(tree) if eqx.is_inexact_array(a) and not np.all(np.isfinite(np.asarray(a)))]
    if bad:
        raise AssertionError(f"{name}: {len(bad)} array(s) contain NaN/inf")


def brute_force_logdet(fn, x):
    """log|det J| of `fn: x -> y` (same size) from the dense Jacobian (reverse
    mode, which every trainable layer supports; some, like Glow's conditioner,
    define only a custom VJP)."""
    jac = jax.jacrev(lambda v: fn(v.reshape(x.shape)).ravel())(x.ravel())
    sign, logdet = jnp.linalg.slogdet(jac)
    return jnp.where(sign == 0, jnp.nan, logdet)  # singular -> NaN fails the comparison


def _neighbour(x, key):
    # A second in-domain example for the vmap check: a convex mix towards a
    # permuted copy keeps intervals like (0, 1) intact.
    flat = x.ravel()
    other = jax.random.permutation(key, flat).reshape(x.shape)
    return 0.7 * x + 0.3 * other


def _cond(condition) -> dict:
    # unconditional models are called exactly as before: no `condition` keyword at all
    return {} if condition is None else {"condition": condition}


@eqx.filter_jit
def _bijection_outputs(bij, x, x2, condition=None):
    # One compiled program for every quantity the check needs: op-by-op
    # dispatch of the same work is many times slower.
    kw = _cond(condition)
    y, ld = bij.forward(x, **kw)
    x_rec, ld_inv = bij.inverse(y, **kw)
    brute = brute_force_logdet(lambda v: bij.forward(v, **kw)[0], x)
    ys, lds = jax.vmap(lambda v: bij.forward(v, **kw))(jnp.stack([x, x2]))
    y2, ld2 = bij.forward(x2, **kw)

    def objective(b, v):
        out, logdet = b.forward(v, **kw)
        return jnp.sum(jnp.tanh(out)) + logdet

    g_params = eqx.filter_grad(objective)(bij, x)
    g_x = jax.grad(lambda v: objective(bij, v))(x)
    return dict(y=y, ld=ld, x_rec=x_rec, ld_inv=ld_inv, brute=brute, ys=ys, lds=lds, y2=y2, ld2=ld2,
                g_params=g_params, g_x=g_x)


def _condition64(condition):
    if condition is None:
        return None
    c = jnp.asarray(condition)
    return c.astype(jnp.float64) if jnp.issubdtype(c.dtype, jnp.floating) else c


def check_bijection(bijection, x, *, condition=None, rtol=1e-5, atol=1e-7, perturb=0.1, key=None):
    """Assert the bijection contract on one example `x` (under `condition`,
    for a conditional layer: passed to `forward`/`inverse` as `condition=`):
    inverse(forward(x)) == x; forward log-det == slogdet of the Jacobian;
    inverse log-det == -forward log-det; it runs under jit, and vmap gives the
    per-example numbers; gradients w.r.t. parameters and input are finite."""
    key = jax.random.key(0) if key is None else key
    k_perturb, k_other = jax.random.split(key)
    with jax.enable_x64(True):
        bij = _perturb(_to64(bijection), perturb, k_perturb)
        x = jnp.asarray(x, jnp.float64)
        out = _bijection_outputs(bij, x, _neighbour(x, k_other), _condition64(condition))
        y, ld = out["y"], out["ld"]
        if jnp.shape(ld) != ():
            raise AssertionError(f"forward log-det must be a scalar, got shape {jnp.shape(ld)}")
        if y.size != x.size:
            raise AssertionError(f"forward changed the dimension: {x.shape} -> {y.shape}")
        _finite("forward output", (y, ld))
        _close("inverse(forward(x)) vs x", out["x_rec"], x, rtol=1e-4, atol=1e-6)
        _close("inverse log-det vs -forward log-det", out["ld_inv"], -ld, rtol, atol)
        _close("log-det vs slogdet(jacobian)", ld, out["brute"], rtol, atol)
        _close("vmap forward", out["ys"], jnp.stack([y, out["y2"]]), 1e-6, 1e-8)
        _close("vmap log-det", out["lds"], jnp.stack([ld, out["ld2"]]), 1e-6, 1e-8)
        _finite("gradient w.r.t. parameters", out["g_params"])
        _finite("gradient w.r.t. input", out["g_x"])
    return bij


@eqx.filter_jit
def _flow_outputs(model, x, x2, k_sample, k_loss, condition=None):
    out = {}
    kw = _cond(condition)
    if hasattr(model, "base") and hasattr(model, "forward"):
        z, ld = model.forward(x, **kw)
        out["base_plus_logdet"] = model.base.log_prob(z) + ld
    out["lp"] = call_with_key(model.log_prob, x, key=k_loss, **kw)
    out["lps"] = jax.vmap(lambda v: call_with_key(model.log_prob, v, key=k_loss, **kw))(jnp.stack([x, x2]))
    out["sample"] = model.sample(k_sample, **kw)
    out["sample_cold"] = model.sample(k_sample, temperature=0.5, **kw)
    loss_fn = lambda m: m.loss(x, key=k_loss, **kw)  # noqa: E731
    (out["loss"], out["aux"]), out["grads"] = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)
    return out


def _conditions(model, condition, key):
    """The conditions to check a model under: [None] for an unconditional
    model; for a conditional one `condition` (encoded) and a second, drawn one
    (two drawn ones if `condition` is None), as float64 arrays of one shape so
    both runs share one compiled program."""
    shape = getattr(model, "condition_shape", None)
    if shape is None:
        return [condition]
    k1, k2 = jax.random.split(jax.random.fold_in(key, 1))
    first = jax.random.normal(k1, shape, jnp.float64) if condition is None else condition
    return [encode_condition(first, shape, dtype=jnp.float64), jax.random.normal(k2, shape, jnp.float64)]


def check_flow(
    model, x, *, condition=None, rtol=1e-5, atol=1e-7, perturb=0.1, key=None, integrate_atol=0.03, grid=200
):
    """Assert the model contract on one example `x`: `log_prob` is a finite
    scalar and vmap reproduces it; `sample` (also at temperature 0.5) has the
    data's shape; `loss(x, key=...)` returns (scalar, dict) with finite
    gradients; models with `forward`/`inverse` pass `check_bijection`, and
    those with a `base` satisfy log_prob = base.log_prob(z) + logdet; for
    1-D/2-D data exp(log_prob) integrates to 1 over a grid.

    A conditional model (one with a `condition_shape`) passes all of that
    under each of two conditions, `condition` (default: drawn) and a drawn
    one, and its log_prob(x) must differ between them."""
    key = jax.random.key(0) if key is None else key
    k_perturb, k_check, k_sample, k_loss, k_int = jax.random.split(key, 5)
    with jax.enable_x64(True):
        model = _perturb(_to64(model), perturb, k_perturb)
        x = jnp.asarray(x, jnp.float64)
        keys = dict(k_check=k_check, k_sample=k_sample, k_loss=k_loss, k_int=k_int)
        lps = [
            _check_flow_under(model, x, c, rtol=rtol, atol=atol, integrate_atol=integrate_atol, grid=grid, **keys)
            for c in _conditions(model, condition, k_check)
        ]
        if len(lps) > 1 and np.isclose(lps[0], lps[1], rtol=1e-9, atol=0.0):
            raise AssertionError(
                f"log_prob(x) is {lps[0]:.6g} under two different conditions: the condition has no effect "
                "(does a container drop it? layers must declare `*, condition=None`)"
            )
    return model


def _check_flow_under(model, x, condition, *, rtol, atol, integrate_atol, grid, k_check, k_sample, k_loss, k_int):
    """check_flow's checks under one condition (None: unconditional); returns log_prob(x)."""
    try:
        if hasattr(model, "forward") and hasattr(model, "inverse"):
            check_bijection(model, x, condition=condition, rtol=rtol, atol=atol, perturb=0.0, key=k_check)
        out = _flow_outputs(model, x, _neighbour(x, k_check), k_sample, k_loss, condition)
        lp = out["lp"]
        if jnp.shape(lp) != () or not bool(jnp.isfinite(lp)):
            raise AssertionError(f"log_prob must be a finite scalar, got {lp}")
        if "base_plus_logdet" in out:
            _close("log_prob vs base.log_prob(z) + logdet", lp, out["base_plus_logdet"], rtol, atol)
        _close("vmap log_prob", out["lps"][0], lp, 1e-6, 1e-8)
        for name in ("sample", "sample_cold"):
            if out[name].shape != x.shape:
                raise AssertionError(f"{name} shape {out[name].shape} != data shape {x.shape}")
            _finite(name, out[name])
        if jnp.shape(out["loss"]) != () or not isinstance(out["aux"], dict):
            raise AssertionError("loss(x, key=...) must return (scalar, dict)")
        _finite("loss", out["loss"])
        _finite("gradient of loss", out["grads"])

        if x.size <= 2 and integrate_atol is not None:
            total = _grid_integral(model, x.shape, k_int, grid, condition)
            if abs(total - 1.0) > integrate_atol:
                raise AssertionError(f"exp(log_prob) integrates to {total:.4f} over a grid, not 1")
    except AssertionError as e:
        if condition is None:
            raise
        raise AssertionError(f"{e}\n(under condition {np.asarray(condition)})") from None
    return float(lp)


@eqx.filter_jit
def _samples(model, key, n, condition=None):
    kw = _cond(condition)
    return jax.vmap(lambda k: model.sample(k, **kw))(jax.random.split(key, n))


@eqx.filter_jit
def _log_probs(model, pts, shape, condition=None):
    kw = _cond(condition)
    return jax.vmap(lambda v: model.log_prob(v.reshape(shape), **kw))(pts)


def _grid_integral(model, shape, key, n, condition=None):
    samples = np.asarray(_samples(model, key, 4000, condition)).reshape(4000, -1)
    lo = samples.min(0) - 3 * samples.std(0)
    hi = samples.max(0) + 3 * samples.std(0)
    axes = [np.linspace(a, b, n) for a, b in zip(lo, hi)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    lp = _log_probs(model, jnp.asarray(pts), shape, condition)
    cell = np.prod([(b - a) / (n - 1) for a, b in zip(lo, hi)])
    return float(jnp.sum(jnp.exp(lp)) * cell)
