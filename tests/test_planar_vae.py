"""The planar_vae plugin: planar/radial flows against the paper's formulas and
brute-force Jacobians, the amortised VAE's posterior density, its importance-
sampled log p(x) against a numerical integral, annealing, and the 2-D energies."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.testing import brute_force_logdet, check_bijection, check_flow, example_input
from zoo_planar_vae.energies import ENERGIES, U1, U2, PlanarFlowDensity, fit_planar, log_partition, reverse_kl
from zoo_planar_vae.flows import Planar, Radial, planar, planar_inverse, planar_root, planar_u_hat
from zoo_planar_vae.model import PlanarVAEConfig, beta_schedule


def _softplus(a):
    return np.log1p(np.exp(-abs(a))) + max(a, 0.0)


def _planar_reference(z, u, w, b):
    """The paper's formulas, literally, in NumPy float64."""
    z, u, w = (np.asarray(v, np.float64) for v in (z, u, w))
    a = w @ u
    u_hat = u + ((-1 + _softplus(a)) - a) * w / (w @ w)
    t = w @ z + b
    psi = (1 - np.tanh(t) ** 2) * w
    return z + u_hat * np.tanh(t), np.log(abs(1 + u_hat @ psi)), u_hat


def _radial_reference(z, z0, a_raw, b_raw):
    z, z0 = np.asarray(z, np.float64), np.asarray(z0, np.float64)
    alpha = _softplus(a_raw)
    beta = -alpha + _softplus(b_raw)
    r = np.linalg.norm(z - z0)
    h = 1 / (alpha + r)
    dh = -1 / (alpha + r) ** 2
    d = z.size
    return z + beta * h * (z - z0), (d - 1) * np.log(1 + beta * h) + np.log(1 + beta * h + beta * dh * r)


def _random_planar(rng, d, w_scale=1.0):
    return rng.normal(size=d) * 2, rng.normal(size=d) * w_scale, rng.normal()


# ---------------------------------------------------------------- planar / radial flows


@pytest.mark.parametrize("w_scale", [1.0, 3.0, 1e-2, 0.0])
def test_planar_contract_for_random_parameters(w_scale):
    rng = np.random.default_rng(int(w_scale * 100))
    with jax.enable_x64(True):
        for _ in range(3):
            u, w, b = _random_planar(rng, 3, w_scale)
            layer = Planar(u=jnp.asarray(u), w=jnp.asarray(w), b=jnp.asarray(b))
            check_bijection(layer, jnp.asarray(rng.normal(size=3) * 2), perturb=0.0)


def test_planar_and_radial_on_images_and_from_registry():
    x = jax.random.normal(jax.random.key(3), (2, 3, 3))
    for name in ("planar", "radial"):
        check_bijection(zoo.create_layer(name, key=jax.random.key(1), shape=(2, 3, 3)), x)


def test_planar_matches_paper_formulas_and_constraint():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for w_scale in (1.0, 1e-3, 1e-6):
            for _ in range(5):
                u, w, b = _random_planar(rng, 4, w_scale)
                u[0] = -40.0 if rng.random() < 0.5 else u[0]  # w.u << -1 too
                z = rng.normal(size=4)
                y_ref, ld_ref, u_hat_ref = _planar_reference(z, u, w, b)
                y, ld = planar(jnp.asarray(z), jnp.asarray(u), jnp.asarray(w), jnp.asarray(b))
                u_hat, s = planar_u_hat(jnp.asarray(u), jnp.asarray(w))
                np.testing.assert_allclose(u_hat, u_hat_ref, rtol=1e-9)
                np.testing.assert_allclose(y, y_ref, rtol=1e-8, atol=1e-8)
                np.testing.assert_allclose(ld, ld_ref, rtol=1e-7, atol=1e-9)
                # invertibility condition w.u_hat >= -1 (here > -1 strictly), and s = 1 + w.u_hat
                assert float(w @ np.asarray(u_hat)) > -1.0
                np.testing.assert_allclose(1 + w @ np.asarray(u_hat), s, rtol=1e-6, atol=1e-12)


def test_planar_constraint_in_float32_and_at_w_zero():
    rng = np.random.default_rng(1)
    for scale in (1.0, 1e-3, 1e-20, 0.0):
        for _ in range(20):
            u = jnp.asarray(rng.normal(size=5) * 5, jnp.float32)
            w = jnp.asarray(rng.normal(size=5) * scale, jnp.float32)
            u_hat, s = planar_u_hat(u, w)
            assert float(s) > 0 and np.all(np.isfinite(np.asarray(u_hat)))
            z = jnp.asarray(rng.normal(size=5), jnp.float32)
            _, ld = planar(z, u, w, jnp.float32(0.3))
            grads = jax.grad(lambda p: planar(z, *p, jnp.float32(0.3))[1] + jnp.sum(planar(z, *p, 0.3)[0]))((u, w))
            assert np.isfinite(float(ld)) and all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    # w = 0: a pure shift by u tanh(b), log-det 0
    y, ld = planar(jnp.ones(3), jnp.array([1.0, 2.0, 3.0]), jnp.zeros(3), jnp.float32(0.5))
    np.testing.assert_allclose(y, 1 + np.tanh(0.5) * np.array([1.0, 2.0, 3.0]), rtol=1e-6)
    assert float(ld) == 0.0


def test_planar_inverse_parameter_gradients_match_finite_differences():
    # d f^-1(y) / d(u, w, b) from the implicit-function step, against central differences
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        u, w, b = (jnp.asarray(v) for v in _random_planar(rng, 3))
        y = jnp.asarray(rng.normal(size=3))
        f = lambda u, w, b: jnp.sum(jnp.sin(planar_inverse(y, u, w, b)[0])) + planar_inverse(y, u, w, b)[1]  # noqa: E731
        grads = jax.grad(f, argnums=(0, 1, 2))(u, w, b)
        eps = 1e-6
        for i, p in enumerate((u, w, b)):
            flat = np.atleast_1d(np.asarray(p))
            for j in range(flat.size):
                d = np.zeros_like(flat)
                d[j] = eps
                args_p = [u, w, b]
                args_m = [u, w, b]
                args_p[i] = jnp.asarray((flat + d).reshape(np.shape(p)))
                args_m[i] = jnp.asarray((flat - d).reshape(np.shape(p)))
                fd = (f(*args_p) - f(*args_m)) / (2 * eps)
                np.testing.assert_allclose(np.atleast_1d(np.asarray(grads[i]))[j], fd, rtol=1e-5, atol=1e-7)


def test_planar_in_the_density_direction_is_the_same_map_with_the_roles_swapped():
    x = jax.random.normal(jax.random.key(4), (4,))
    sample = zoo.create_layer("planar", key=jax.random.key(1), shape=(4,))
    density = zoo.create_layer("planar", key=jax.random.key(1), shape=(4,), direction="density")
    assert sample.direction == "sample"  # the default is unchanged
    for layer in (sample, density):
        check_bijection(layer, x)
    # the closed-form map f is density.forward and sample.inverse; the root-find the other two
    for got, want in ((density.forward(x), sample.inverse(x)), (density.inverse(x), sample.forward(x))):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="direction"):
        Planar((4,), key=jax.random.key(1), direction="normalizing")


@jax.jit
def _root_case(u, w, b, y):
    """(Newton steps, |f(f^-1(y)) - y| / (1 + |u|)) for one planar map: one compile, not op by op."""
    _, s = planar_u_hat(u, w)
    _, n = planar_root(w @ y, s, b)
    z, _ = planar_inverse(y, u, w, b)
    return n, jnp.max(jnp.abs(planar(z, u, w, b)[0] - y)) / (1 + jnp.max(jnp.abs(u)))


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_planar_root_find_stops_when_converged(dtype):
    # safeguarded Newton: a handful of steps where 100 bisections ran before, same accuracy
    rng = np.random.default_rng(5)
    iters, errors = [], []
    with jax.enable_x64(dtype == jnp.float64):
        for w_scale in (3.0, 1.0, 1e-2):
            for i in range(30):
                u, w, b = (jnp.asarray(v, dtype) for v in _random_planar(rng, 4, w_scale))
                u = u.at[0].set(-40.0) if i % 3 == 0 else u  # s near 0: g' near 0 at the inflection
                y = jnp.asarray(rng.normal(size=4) * 2, dtype)
                n, error = _root_case(u, w, b, y)
                iters.append(int(n))
                errors.append(float(error))
        assert np.median(iters) <= 6 and max(iters) <= 16, (np.median(iters), max(iters))
        assert max(errors) < 1000 * float(jnp.finfo(dtype).eps), max(errors)  # f(f^-1(y)) = y
        # the cap holds; w = 0 (a shift) needs one step
        assert int(planar_root(jnp.asarray(0.3, dtype), jnp.asarray(1e-3, dtype), jnp.asarray(0.0, dtype), max_iters=2)[1]) == 2
        assert int(planar_root(jnp.asarray(0.3, dtype), jnp.asarray(1.0, dtype), jnp.asarray(0.5, dtype))[1]) == 1


def test_radial_matches_paper_formulas_and_inverts_at_centre():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        for _ in range(5):
            z0, z = rng.normal(size=3), rng.normal(size=3) * 2
            a_raw, b_raw = rng.normal() * 2, rng.normal() * 2
            layer = Radial(z0=jnp.asarray(z0), a_raw=jnp.asarray(a_raw), b_raw=jnp.asarray(b_raw))
            y, ld = layer.inverse(jnp.asarray(z))  # the paper's map f
            y_ref, ld_ref = _radial_reference(z, z0, a_raw, b_raw)
            np.testing.assert_allclose(y, y_ref, rtol=1e-10)
            np.testing.assert_allclose(ld, ld_ref, rtol=1e-9, atol=1e-12)
            check_bijection(layer, jnp.asarray(z), perturb=0.0)
            # f fixes the centre; so does f^-1
            x, ld0 = layer.forward(jnp.asarray(z0))
            np.testing.assert_allclose(x, z0, atol=1e-12)
            assert np.isfinite(float(ld0))


# ---------------------------------------------------------------- the VAE


def _tiny(**kw):
    cfg = dict(latent_dim=2, hidden=6, maxout_window=2, flow_length=3, num_importance=16, eval_chunk=5)
    cfg.update(kw)
    return zoo.create_model("planar_vae", key=jax.random.key(0), input_shape=(6,), **cfg)


def _to64(model):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)


def test_amortised_posterior_density_matches_change_of_variables():
    # log q(zK|x) = log N(z0; mu, sigma^2) - log|det d zK / d z0|, the latter by a dense Jacobian
    with jax.enable_x64(True):
        for flow in ("planar", "radial"):
            model = _to64(_tiny(flow=flow, latent_dim=3, flow_length=4))
            # the flow outputs' weights start at zero (same flows for every x): give them some
            w = model.enc_head.weight
            model = eqx.tree_at(lambda m: m.enc_head.weight, model, w + 0.3 * jax.random.normal(jax.random.key(9), w.shape))
            x = jnp.asarray([1.0, 0, 1, 1, 0, 0])

            @eqx.filter_jit
            def check(model, key):
                mu, log_var, flows = model.encode(x)
                _, log_q = model._posterior_sample(mu, log_var, flows, key)
                z0 = mu + jnp.exp(0.5 * log_var) * jax.random.normal(key, mu.shape, mu.dtype)
                log_q0 = jnp.sum(jax.scipy.stats.norm.logpdf(z0, mu, jnp.exp(0.5 * log_var)))
                logdet = brute_force_logdet(lambda v: flows.inverse(v)[0], z0)
                other = model.encode(1.0 - x)[2]
                return log_q, log_q0 - logdet, jax.tree.leaves(flows)[0], jax.tree.leaves(other)[0]

            log_q, want, params, other = check(model, jax.random.key(5))
            np.testing.assert_allclose(log_q, want, rtol=1e-10)
            # the flows really are per-example: another x gives other parameters
            assert not np.allclose(params, other)


def test_importance_sampled_log_prob_matches_numerical_integral():
    # log p(x) = log of the integral over z of p(x|z) p(z), brute force on a 2-D grid
    with jax.enable_x64(True):
        model = _to64(_tiny(flow_length=2, num_importance=20_000, eval_chunk=2000))
        # a proposal wider than the posterior (log sigma^2 + 1.5) keeps the weights' variance small
        model = eqx.tree_at(lambda m: m.enc_head.bias, model, model.enc_head.bias.at[2:4].add(1.5))
        x = jnp.asarray([1.0, 0, 1, 1, 0, 1])
        axis = np.linspace(-7, 7, 351)
        zs = jnp.asarray(np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2))
        log_joint = jax.vmap(lambda z: model.log_likelihood(x, z) - 0.5 * z @ z - math.log(2 * math.pi))(zs)
        exact = float(jax.scipy.special.logsumexp(log_joint) + 2 * math.log(axis[1] - axis[0]))
        d = eqx.filter_jit(lambda m, k: m.diagnostics(x, key=k))(model, jax.random.key(1))
        assert abs(float(d["nll"]) + exact) < 0.03, (float(d["nll"]), -exact)
        # the free energy bounds -log p(x) from above; the gap is the KL to the posterior
        assert float(d["free_energy"]) > -exact and float(d["kl_posterior"]) > 0
        np.testing.assert_allclose(d["kl_posterior"], d["free_energy"] - d["nll"], rtol=1e-12)
        np.testing.assert_allclose(model.log_prob(x, key=jax.random.key(1)), -d["nll"], rtol=1e-12)


def test_importance_sampling_does_not_depend_on_chunking():
    with jax.enable_x64(True):
        x = jnp.asarray([0.0, 1, 1, 0, 1, 0])
        results = []
        for chunk in (1, 7, 50):
            model = _to64(_tiny(num_importance=50, eval_chunk=chunk))
            results.append(model.diagnostics(x, key=jax.random.key(2)))
        for r in results[1:]:
            for name in ("nll", "free_energy"):
                np.testing.assert_allclose(r[name], results[0][name], rtol=1e-12)


def test_loss_is_the_annealed_free_energy():
    np.testing.assert_allclose(beta_schedule(0), 0.01)
    np.testing.assert_allclose(beta_schedule(4900), 0.5, rtol=1e-6)
    np.testing.assert_allclose(beta_schedule(10_000), 1.0)
    np.testing.assert_allclose(beta_schedule(50_000), 1.0)
    with jax.enable_x64(True):
        model = _to64(_tiny(anneal_steps=10_000))
        x, key = jnp.asarray([1.0, 0, 0, 1, 1, 0]), jax.random.key(4)
        full, aux = model.loss(x, key=key)
        np.testing.assert_allclose(full, aux["free_energy"], rtol=1e-12)
        np.testing.assert_allclose(aux["free_energy"], aux["kl"] + aux["reconstruction"], rtol=1e-12)
        # the loss is log q - beta log p(x, z): affine in beta, same sample for the same key
        l0, a0 = model.loss(x, key=key, step=jnp.int32(0))
        l1, a1 = model.loss(x, key=key, step=jnp.int32(4900))
        assert float(a0["beta"]) == pytest.approx(0.01) and float(a1["beta"]) == pytest.approx(0.5)
        np.testing.assert_allclose((l0 - full) / (l1 - full), 0.99 / 0.5, rtol=1e-9)
        # the gradient reaches the weights of the encoder's flow outputs (zero at init, so they can learn)
        assert float(jnp.abs(model.enc_head.weight[4:]).sum()) == 0
        g = eqx.filter_grad(lambda m: m.loss(x, key=key, step=jnp.int32(3))[0])(model)
        assert float(jnp.abs(g.enc_head.weight[4:]).sum()) > 0


@pytest.mark.parametrize("overrides", [dict(flow_length=0, binarize_input=True), dict(flow="radial", amortized=False)])
def test_vae_variants_conform(overrides):
    base = dict(PlanarVAEConfig.example_overrides)
    base.update(overrides)
    model = zoo.create_model("planar_vae", key=jax.random.key(0), input_shape=(1, 3, 3), **base)
    check_flow(model, example_input(PlanarVAEConfig, (1, 3, 3)))


def test_vae_full_size_shapes_and_sample():
    model = zoo.create_model("planar_vae", key=jax.random.key(0), input_shape=(1, 28, 28), flow_length=80)
    assert model.enc_head.weight.shape == (2 * 40 + 80 * 81, 400) and model.enc_body[0].linear.weight.shape == (1600, 784)
    mu, log_var, flows = eqx.filter_eval_shape(model.encode, jnp.zeros(784))
    assert mu.shape == (40,) and flows.length == 80 and flows.stacked.u.shape == (80, 40)
    s = eqx.filter_jit(model.sample)(jax.random.key(1))
    assert s.shape == (1, 28, 28) and float(s.min()) >= 0 and float(s.max()) <= 1
    with pytest.raises(ValueError, match="flow_length"):
        zoo.create_model("planar_vae", key=jax.random.key(0), input_shape=(4,), flow_length=-1)


# ---------------------------------------------------------------- 2-D energies


def test_energies_hand_values_and_partition_function():
    np.testing.assert_allclose(U1(jnp.array([2.0, 0.0])), -np.log1p(np.exp(-0.5 * (4 / 0.6) ** 2)), atol=1e-9)
    np.testing.assert_allclose(U2(jnp.array([1.0, 1.0])), 0.0, atol=1e-6)
    np.testing.assert_allclose(U2(jnp.array([5.0, 1.0])), 12.5, rtol=1e-5)  # the wall beyond |z1| = 4
    np.testing.assert_allclose(log_partition(lambda z: 0.5 * z @ z), math.log(2 * math.pi), rtol=1e-6)
    for name, u in ENERGIES.items():
        assert np.isfinite(log_partition(u, n=201)), name


def test_reverse_kl_fit_improves_on_u1():
    log_z = log_partition(U1, n=401)
    untrained = PlanarFlowDensity(4, key=jax.random.split(jax.random.key(0))[0])  # fit_planar's initial flow
    model, losses = fit_planar(U1, 4, key=jax.random.key(0), steps=300, batch=128, lr=1e-2, anneal_steps=100)
    kl, se = reverse_kl(model, U1, log_z, key=jax.random.key(1), n=20_000)
    kl0, _ = reverse_kl(untrained, U1, log_z, key=jax.random.key(1), n=20_000)
    assert kl >= -4 * se  # a KL is non-negative: checks log Z and the flow's log q
    assert kl < kl0 - 0.5, (kl, kl0)
    # the density of the fitted flow (through the numerical inverse) integrates to 1
    axis = np.linspace(-6, 6, 241)
    pts = jnp.asarray(np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2))
    total = float(jnp.sum(jnp.exp(jax.jit(jax.vmap(model.log_prob))(pts))) * (axis[1] - axis[0]) ** 2)
    assert abs(total - 1) < 0.02, total
