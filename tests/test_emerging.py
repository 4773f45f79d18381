"""The emerging plugin: emerging convolution and convolution exponential layers,
and the emerging_cnn / exponential_cnn models.

The registered layers and models also run through the generic conformance
tests (tests/test_bijections.py, tests/test_models.py); here: variants, the
convolution helpers against lax.conv, the autoregressive structure, exact
inverses in float32, exp(M) against a dense matrix exponential, spectral
normalisation, gradients against finite differences, the train/eval terms,
and the power-vector refresh through `zoo.after_update` and the trainer's step
(in the exponential_cnn flow and in a Glow with conv_exp mixing).
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.bijections import Chain, Scan, after_update, stack
from zoo.testing import check_bijection
from zoo.train.config import TrainConfig
from zoo.train.loop import global_batch, init_opt_state, make_mesh, make_optimizer, make_train_step
from zoo_emerging import ConvExp, Emerging, causal_mask, conv_exp
from zoo_emerging.conv import conv_causal, conv_same, conv_same_transpose
from zoo_glow import GlowConfig

KEY = jax.random.key(0)


def _dense(fn, shape):
    """The matrix of a linear map of C x H x W images (flattened C-major)."""
    return jax.jacfwd(lambda v: fn(v.reshape(shape)).ravel())(jnp.zeros(int(np.prod(shape))))


def _to64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree)


def _scaled(layer, name, factor):
    return eqx.tree_at(lambda m: getattr(m, name), layer, getattr(layer, name) * factor)


def test_layers_registered():
    assert zoo.get_layer("emerging") is Emerging and zoo.get_layer("conv_exp") is ConvExp


@pytest.mark.parametrize(
    "make, shape",
    [
        # 5x5 emerging conv, H != W, enough channels for the shifted-matmul convolutions
        (lambda k: Emerging((5, 3, 4), key=k, kernel_size=3), (5, 3, 4)),
        (lambda k: ConvExp((1, 5, 3), key=k, kernel_size=5, mix=False, terms_eval=18), (1, 5, 3)),
    ],
)
def test_layer_variants_conform(make, shape):
    check_bijection(make(KEY), jax.random.normal(jax.random.key(2), shape))


@pytest.mark.parametrize("impl", ["shifted", "lax", None])
def test_convolutions_match_lax_conv_and_adjoint(impl):
    x = jax.random.normal(KEY, (3, 6, 5))
    y = jax.random.normal(jax.random.key(1), (4, 6, 5))
    dn = ("NCHW", "OIHW", "NCHW")

    @jax.jit
    def cases(kernels, causal):
        out = []
        for kern in kernels:
            want = jax.lax.conv_general_dilated(x[None], kern, (1, 1), "SAME", dimension_numbers=dn)[0]
            got = conv_same(x, kern, impl=impl)
            # adjoint: <M x, y> = <x, M^T y>
            out.append((got, want, jnp.vdot(got, y), jnp.vdot(x, conv_same_transpose(y, kern, impl=impl))))
        for kern in causal:
            s = kern.shape[-1]
            want = jax.lax.conv_general_dilated(x[None], kern, (1, 1), ((s - 1, 0), (s - 1, 0)), dimension_numbers=dn)[0]
            centre = kern * (jnp.arange(s)[:, None] + jnp.arange(s) == 2 * (s - 1))
            out.append((conv_causal(x, kern, impl=impl), want, conv_causal(x, kern, skip_centre=True, impl=impl),
                        want - conv_causal(x, centre, impl="shifted")))
        return out

    kernels = [jax.random.normal(jax.random.key(k), (4, 3, k, k)) for k in (1, 5)]
    causal = [jax.random.normal(jax.random.key(s), (4, 3, s, s)) for s in (2, 3)]
    for got, want, a, b in cases(kernels, causal):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_autoregressive_conv_is_triangular_with_centre_diagonal():
    c, h, w, s = 3, 4, 5, 2
    kern = jax.random.normal(KEY, (c, c, s, s)) * jnp.asarray(causal_mask(c, s))
    jac = np.asarray(_dense(lambda v: conv_causal(v, kern), (c, h, w)))
    # reorder to pixel-major raster order (i, j, channel): then lower triangular
    perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()
    jac = jac[np.ix_(perm, perm)]
    np.testing.assert_array_equal(np.triu(jac, 1), 0.0)
    np.testing.assert_allclose(np.diag(jac), np.tile(np.diag(kern[:, :, s - 1, s - 1]), h * w), rtol=1e-6)


def test_emerging_logdet_is_centre_diagonals_times_hw():
    shape = (2, 3, 4)
    layer = Emerging(shape, key=KEY)
    layer = eqx.tree_at(lambda m: m.weights, layer, layer.weights + 0.2 * jax.random.normal(KEY, layer.weights.shape))
    _, ld = eqx.filter_jit(layer.forward)(jnp.ones(shape))
    d = np.concatenate([np.diag(layer.weights[i, :, :, 1, 1]) for i in range(2)])
    want = 12 * (np.sum(np.log(np.abs(d))) + float(jnp.sum(layer.mix.log_s)))
    np.testing.assert_allclose(ld, want, rtol=1e-5)


@pytest.mark.parametrize("shape, kernel_size", [((3, 7, 10), 3), ((1, 28, 28), 2)])
def test_emerging_inverse_exact_in_float32(shape, kernel_size):
    layer = Emerging(shape, key=KEY, kernel_size=kernel_size)
    # away from the identity initialisation. (Much larger off-centre taps make
    # the substitution itself ill-conditioned -- rounding errors grow
    # geometrically across the image in any precision -- a property of
    # autoregressive inverses, not of the solver.)
    noise = 0.1 * jax.random.normal(jax.random.key(5), layer.weights.shape)
    layer = eqx.tree_at(lambda m: m.weights, layer, layer.weights + noise)
    x = jax.random.normal(jax.random.key(3), shape)
    y, ld = eqx.filter_jit(lambda m, v: m.forward(v))(layer, x)
    x_rec, ld_inv = eqx.filter_jit(lambda m, v: m.inverse(v))(layer, y)
    assert x_rec.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(x_rec - x))) <= 1e-4
    np.testing.assert_allclose(ld_inv, -ld, rtol=1e-6)


def test_conv_exp_is_matrix_exponential_with_trace_logdet():
    shape = (2, 3, 4)

    @eqx.filter_jit
    def outputs(layer, x):
        kernel = layer.normalised_kernel()
        m = _dense(lambda v: conv_same(v, kernel), shape)
        expm = jax.scipy.linalg.expm(m)
        y, ld = layer.forward(x)
        return dict(y=y.ravel(), want=expm @ x.ravel(), ld=ld, trace=jnp.trace(m),
                    centre=12 * jnp.trace(kernel[:, :, 1, 1]), slogdet=jnp.linalg.slogdet(expm)[1])

    with jax.enable_x64(True):
        layer = _to64(ConvExp(shape, key=KEY, mix=False, terms_eval=20))
        layer = _scaled(layer, "kernel", 30.0)  # large: spectral normalisation is active
        out = outputs(layer, jax.random.normal(jax.random.key(4), shape, jnp.float64))
        np.testing.assert_allclose(out["y"], out["want"], rtol=1e-9, atol=1e-10)
        # log det exp(M) = tr M = H W sum_c K[c, c, centre]
        for name in ("trace", "centre", "slogdet"):
            np.testing.assert_allclose(out["ld"], out[name], rtol=1e-8)


@pytest.mark.parametrize("shape", [(4, 7, 7)])
def test_conv_exp_inverse_exact_in_float32(shape):
    layer = _scaled(ConvExp(shape, key=KEY), "kernel", 20.0)
    x = jax.random.normal(jax.random.key(3), shape)
    y, ld = eqx.filter_jit(lambda m, v: m.forward(v))(layer, x)
    x_rec, ld_inv = eqx.filter_jit(lambda m, v: m.inverse(v))(layer, y)
    assert float(jnp.max(jnp.abs(x_rec - x))) <= 1e-4
    np.testing.assert_allclose(ld_inv, -ld, rtol=1e-6)


def test_spectral_normalisation_bounds_the_operator_norm():
    shape = (3, 5, 5)

    @eqx.filter_jit
    def outputs(layer):
        k = layer.normalised_kernel()
        return dict(estimate=layer.spectral_norm(), kernel=layer.kernel, normalised=k,
                    true=jnp.linalg.norm(_dense(lambda v: conv_same(v, layer.kernel), shape), 2),
                    true_normalised=jnp.linalg.norm(_dense(lambda v: conv_same(v, k), shape), 2))

    with jax.enable_x64(True):
        layer = _to64(ConvExp(shape, key=KEY, mix=False, power_iterations=30))
        big = outputs(_scaled(layer, "kernel", 40.0))
        assert big["true"] > 1.5
        np.testing.assert_allclose(big["estimate"], big["true"], rtol=1e-6)
        np.testing.assert_allclose(big["true_normalised"], 0.9, rtol=1e-6)
        # a kernel already inside the bound is left alone
        small = outputs(_scaled(layer, "kernel", 0.5 / float(big["true"] / 40.0)))
        np.testing.assert_allclose(small["true"], 0.5, rtol=1e-6)
        np.testing.assert_allclose(small["normalised"], small["kernel"], rtol=1e-12)


def test_power_vectors_refresh_inside_a_scan():
    shape = (2, 4, 4)
    keys = jax.random.split(KEY, 3)
    layers = [_scaled(ConvExp(shape, key=k, mix=False), "kernel", 10.0) for k in keys]
    # a poor start: the stored vector is reset to a fixed random one
    v0 = jax.random.normal(jax.random.key(9), shape)
    layers = [eqx.tree_at(lambda m: m.power_vector, layer, v0) for layer in layers]
    chain = Chain(layers)
    assert isinstance(chain.layers[0], Scan)
    true = [np.linalg.norm(np.asarray(_dense(lambda v: conv_same(v, layer.kernel), shape)), 2) for layer in layers]

    params, static = eqx.partition(chain, eqx.is_array)

    @jax.jit
    def estimates(params, refreshes):
        params = jax.lax.fori_loop(
            0, refreshes, lambda _, p: eqx.filter(after_update(eqx.combine(p, static)), eqx.is_array), params
        )
        return eqx.filter_vmap(lambda m: m.spectral_norm())(eqx.combine(params, static).layers[0].stacked)

    first, after = np.asarray(estimates(params, 0)), np.asarray(estimates(params, 60))
    np.testing.assert_allclose(after, true, rtol=1e-3)
    assert np.all(first <= np.asarray(true) * (1 + 1e-6))  # u^T M v never overestimates
    assert np.all(np.abs(after - true) < np.abs(first - true))


def test_after_update_refreshes_plain_and_stacked_layers_as_each_layer_would():
    shape = (2, 4, 4)
    v0 = jax.random.normal(jax.random.key(9), shape)

    def make(k):  # large kernel, unconverged stored vector: one refresh moves it visibly
        layer = _scaled(ConvExp(shape, key=k, power_iterations=2), "kernel", 10.0)
        return eqx.tree_at(lambda m: m.power_vector, layer, v0)

    plain, *stacked = [make(k) for k in jax.random.split(KEY, 4)]
    chain = Chain([plain, stack(stacked)], scan=False)
    assert isinstance(chain.layers[1], Scan) and chain.layers[1].stacked.kernel.ndim == 5
    new = eqx.filter_jit(after_update)(chain)
    layers = [new.layers[0]] + [new.layers[1].layer(i) for i in range(3)]
    for got, layer in zip(layers, [plain, *stacked]):
        want = layer.after_update()
        np.testing.assert_allclose(got.power_vector, want.power_vector, rtol=1e-5, atol=1e-6)
        assert not np.allclose(want.power_vector, v0, atol=1e-2)
        np.testing.assert_array_equal(got.kernel, layer.kernel)


def test_conv_exp_gradient_matches_finite_differences():
    # With a converged power iteration, d sigma / dK = u v^T contracted: the
    # stop-gradient'd vectors give the true gradient of the normalised layer.
    shape = (2, 3, 3)
    with jax.enable_x64(True):
        # scaling the kernel keeps its singular vectors: the stored vector is converged
        layer = ConvExp(shape, key=KEY, power_iterations=2)
        layer = _to64(layer)
        layer = _scaled(layer, "kernel", 25.0)
        x = jax.random.normal(jax.random.key(6), shape, jnp.float64)

        def f(kernel):
            out, ld = eqx.tree_at(lambda m: m.kernel, layer, kernel).forward(x)
            return jnp.sum(jnp.tanh(out)) + ld

        @jax.jit
        def directional(d, eps=1e-5):
            fd = (f(layer.kernel + eps * d) - f(layer.kernel - eps * d)) / (2 * eps)
            return jnp.vdot(jax.grad(f)(layer.kernel), d), fd

        for i in range(2):
            got, fd = directional(jax.random.normal(jax.random.key(10 + i), layer.kernel.shape, jnp.float64))
            np.testing.assert_allclose(got, fd, rtol=1e-5)


def test_inference_flag_selects_terms():
    shape = (2, 4, 4)
    layer = _scaled(ConvExp(shape, key=KEY, mix=False, terms_train=2, terms_eval=9), "kernel", 20.0)
    training = eqx.nn.inference_mode(layer, False)
    assert layer.terms == 9 and training.terms == 2 and eqx.nn.inference_mode(training).terms == 9
    x = jax.random.normal(jax.random.key(7), shape)
    k = layer.normalised_kernel()
    np.testing.assert_allclose(training.forward(x)[0], x + conv_same(x, k) + conv_same(conv_same(x, k), k) / 2,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.forward(x)[0], conv_exp(x, k, 9), rtol=1e-6)
    assert float(jnp.max(jnp.abs(training.forward(x)[0] - layer.forward(x)[0]))) > 1e-4
    # the flag reaches layers stacked inside a Scan
    chain = Chain([ConvExp(shape, key=k, terms_train=2) for k in jax.random.split(KEY, 3)])
    flags = [m.inference for m in jax.tree.leaves(eqx.nn.inference_mode(chain, False),
                                                  is_leaf=lambda m: isinstance(m, ConvExp))]
    assert flags == [False]


# ---- models ----------------------------------------------------------------


def _layers_of(model, cls):
    return [m for m in jax.tree.leaves(model, is_leaf=lambda m: isinstance(m, cls)) if isinstance(m, cls)]


def test_emerging_cnn_is_the_snf_skeleton_and_inverts_in_float32():
    model = zoo.create_model("emerging_cnn", key=KEY, input_shape=(1, 4, 4), num_blocks=2, layers_per_block=3)
    # 2 blocks x 3 emerging convs; identical layers of a block share one scan
    convs = _layers_of(model, Emerging)
    assert sum(1 if m.weights.ndim == 5 else m.weights.shape[0] for m in convs) == 6
    assert {m.mix.log_s.shape[-1] for m in convs} == {1, 4}
    # perturb away from the near-identity initialisation
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, tdef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    leaves = [a + 0.05 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    model = eqx.combine(jax.tree.unflatten(tdef, leaves), static)
    x = jax.random.uniform(jax.random.key(4), (1, 4, 4), minval=0.05, maxval=0.95)

    @eqx.filter_jit
    def round_trip(m, x):
        z, ld = m.forward(x)
        return m.inverse(z), ld

    (x_rec, ld_inv), ld = round_trip(model, x)
    assert float(jnp.max(jnp.abs(x_rec - x))) <= 1e-4
    np.testing.assert_allclose(ld_inv, -ld, rtol=1e-5)


def _with_large_kernels_and_random_vectors(model):
    # normalisation active (series terms matter), power vectors far from converged
    return eqx.tree_at(
        lambda m: _layers_of(m, ConvExp), model,
        replace_fn=lambda m: eqx.tree_at(lambda c: c.power_vector, _scaled(m, "kernel", 20.0),
                                         jax.random.normal(KEY, m.power_vector.shape)),
    )


def _sigmas(model):
    """Per ConvExp (stacked ones vmapped): the power-iteration estimate and the true ||M||_2."""
    out = []
    for c in _layers_of(model, ConvExp):
        shape = c.power_vector.shape[-3:]
        true = lambda k: jnp.linalg.norm(_dense(lambda v: conv_same(v, k), shape), 2)  # noqa: E731
        if c.kernel.ndim == 5:
            out.append((eqx.filter_vmap(ConvExp.spectral_norm)(c), jax.vmap(true)(c.kernel)))
        else:
            out.append((c.spectral_norm(), true(c.kernel)))
    return out


def test_exponential_cnn_is_a_plain_flow_with_train_terms_and_refresh():
    model = zoo.create_model("exponential_cnn", key=KEY, input_shape=(1, 4, 4), num_blocks=2, layers_per_block=2)
    assert isinstance(model, zoo.Flow)  # no wrapper: the trainer switches terms and refreshes
    model = _with_large_kernels_and_random_vectors(model)
    x = jax.random.uniform(jax.random.key(4), (1, 4, 4), minval=0.05, maxval=0.95)

    @eqx.filter_jit
    def outputs(m, x):
        training = eqx.nn.inference_mode(m, False)
        return training.loss(x, key=KEY)[0], m.log_prob(x), training.log_prob(x), after_update(m)

    loss, lp_eval, lp_train, stepped = outputs(model, x)
    np.testing.assert_allclose(loss, -lp_train, rtol=1e-6)
    assert abs(float(lp_train - lp_eval)) > 1e-6  # 6 terms in training, 13 in log_prob
    assert all(m.inference for m in _layers_of(model, ConvExp))
    # after_update advances every stored vector (the sigma estimate grows towards ||M||), nothing else
    for (a, _), (b, _) in zip(_sigmas(stepped), _sigmas(model)):
        assert np.all(np.asarray(a) >= np.asarray(b) - 1e-5) and np.any(np.asarray(a) > np.asarray(b) + 1e-4)
    for a, b in zip(_layers_of(stepped, ConvExp), _layers_of(model, ConvExp)):
        assert not np.allclose(a.power_vector, b.power_vector)
        np.testing.assert_array_equal(a.kernel, b.kernel)


@dataclasses.dataclass(frozen=True)
class _ConvExpGlow(GlowConfig):
    mixing: str = "conv_exp"

    def mixing_options(self):
        return {"terms_train": 1, "terms_eval": 12}


def test_glow_with_conv_exp_gets_train_terms_and_refresh_from_the_trainer_step():
    # Glow builds conv_exp by registry name and knows nothing of it: the trainer's
    # own step must run the loss with terms_train and refresh the stacked vectors.
    model = _ConvExpGlow(levels=2, depth=2, width=4).build(input_shape=(1, 4, 4), key=KEY)
    assert [c.kernel.shape[0] for c in _layers_of(model, ConvExp)] == [2, 2]  # one scan per level
    model = _with_large_kernels_and_random_vectors(model)
    x = np.asarray(jax.random.uniform(jax.random.key(4), (2, 1, 4, 4), minval=0.05, maxval=0.95))

    @eqx.filter_jit
    def mean_log_probs(m, x):
        return jnp.mean(jax.vmap(eqx.nn.inference_mode(m, False).log_prob)(x)), jnp.mean(jax.vmap(m.log_prob)(x))

    lp_train, lp_eval = mean_log_probs(model, x)
    assert abs(float(lp_train - lp_eval)) > 1e-3  # 1 term vs 12

    mesh = make_mesh()
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = make_optimizer(TrainConfig(), steps_per_epoch=1, total_steps=1)
    step = make_train_step(static, optimizer, mesh)
    donated = jax.tree.map(jnp.copy, params)
    new_params, _, metrics = step(donated, init_opt_state(optimizer, donated), global_batch(mesh, x),
                                  global_batch(mesh, np.ones(2, bool)), KEY, jnp.int32(0))
    np.testing.assert_allclose(metrics["loss"], -lp_train, rtol=1e-5)
    new = eqx.combine(new_params, static)
    assert all(c.inference for c in _layers_of(new, ConvExp))  # evaluation keeps terms_eval

    # each stored vector is the refresh of the updated kernel from the old vector
    old_vectors = [c.power_vector for c in _layers_of(model, ConvExp)]
    stale = eqx.tree_at(lambda m: [c.power_vector for c in _layers_of(m, ConvExp)], new, old_vectors)
    want = eqx.filter_jit(after_update)(stale)
    for got, w, c_old, v_old in zip(_layers_of(new, ConvExp), _layers_of(want, ConvExp),
                                    _layers_of(model, ConvExp), old_vectors):
        assert not np.array_equal(got.kernel, c_old.kernel)  # the update happened
        assert not np.allclose(got.power_vector, v_old, atol=1e-2)
        np.testing.assert_allclose(got.power_vector, w.power_vector, rtol=1e-4, atol=1e-5)
    # and the sigma estimates moved towards the true norms
    for (est_new, true_new), (est_old, true_old) in zip(eqx.filter_jit(_sigmas)(new), eqx.filter_jit(_sigmas)(model)):
        assert np.all(np.abs(np.asarray(est_new - true_new)) < np.abs(np.asarray(est_old - true_old)))
