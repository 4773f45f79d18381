"""Self-normalizing flows: the self-normalized gradient equals the exact one
when R = W^-1 (dense, 1x1 and k x k convolutions), the reconstruction term's
gradient matches its definition, per-layer reconstruction errors and GECO,
the exact block-LU convolution log-det and solve, and the activations."""

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.bijections import Chain
from zoo.distributions import StandardNormal
from zoo.flow import Flow
from zoo.testing import check_bijection
from zoo_selfnorm.activations import SELU, LearnableLeakyReLU, SmoothLeakyReLU
from zoo_selfnorm.layers import SelfNormConv, SelfNormDense, snf_logdet
from zoo_selfnorm.model import SelfNormModel, configure_selfnorm, geco_update, snf_layers
from zoo_selfnorm.ops import (
    conv2d_same, conv_logdet_blocks, conv_logdet_dense, conv_matrix, conv_solve_blocks, tap_counts,
)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _to64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree)


def _set(layer, w, r):
    return eqx.tree_at(lambda l: (l.weight, l.inv_weight), layer, (w, r))


def _mean_loss(model, xs):
    return jnp.mean(jax.vmap(lambda x: model.loss(x)[0])(xs))


def _mean_nll(model, xs):
    return -jnp.mean(jax.vmap(model.log_prob)(xs))


grad_loss = eqx.filter_jit(eqx.filter_grad(_mean_loss))  # one compile per model structure
grad_nll = eqx.filter_jit(eqx.filter_grad(_mean_nll))


def _flow(layers, out_shape, **opts):
    flow = Flow(Chain(layers, scan=False), StandardNormal(out_shape))
    return SelfNormModel(configure_selfnorm(flow, **opts))


# ---------------------------------------------------------- gradient identities


def _dense_model(rng, d=4, scale=1.0, lam=1.0):
    k = jax.random.split(jax.random.key(rng), 4)
    w1 = jnp.eye(d) + 0.4 * jax.random.normal(k[0], (d, d))
    w2 = jnp.eye(d) + 0.4 * jax.random.normal(k[1], (d, d))
    l1 = _set(SelfNormDense((d,), key=k[2]), w1, jnp.linalg.inv(w1))
    l2 = _set(SelfNormDense((d,), key=k[3]), w2, jnp.linalg.inv(w2))
    return _flow([l1, SmoothLeakyReLU(), l2], (d,), recon_loss_weight=lam, nll_grad_scale=scale)


def test_dense_selfnorm_gradient_equals_exact_when_R_is_the_inverse():
    model = _to64(_dense_model(0))
    xs = jax.random.normal(jax.random.key(1), (5, 4))
    g_snf = grad_loss(model, xs)
    g_exact = grad_nll(model, xs)
    layers_snf, layers_exact = snf_layers(g_snf), snf_layers(g_exact)
    for ls, le in zip(layers_snf, layers_exact):
        np.testing.assert_allclose(ls.weight, le.weight, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(ls.bias, le.bias, rtol=1e-9, atol=1e-11)

    # d/dR: the exact gradient of the same NLL with W := R^-1 (the R-parametrisation)
    def nll_of_r(rs):
        m = eqx.tree_at(lambda m: [l.weight for l in snf_layers(m)], model, [jnp.linalg.inv(r) for r in rs])
        return _mean_nll(m, xs)

    g_r = jax.grad(nll_of_r)([l.inv_weight for l in snf_layers(model)])
    for ls, gr in zip(layers_snf, g_r):
        np.testing.assert_allclose(ls.inv_weight, gr, rtol=1e-9, atol=1e-11)

    # the reference's default scale 1/2 halves the likelihood gradient of W
    half = grad_loss(_to64(_dense_model(0, scale=0.5)), xs)
    np.testing.assert_allclose(snf_layers(half)[0].weight, 0.5 * layers_exact[0].weight, rtol=1e-9, atol=1e-11)


def test_loss_value_is_nll_without_the_selfnorm_logdets():
    model = _to64(_dense_model(2))
    x = jax.random.normal(jax.random.key(3), (4,))
    loss, aux = model.loss(x)
    logdets = sum(jnp.linalg.slogdet(l.weight)[1] for l in snf_layers(model))
    np.testing.assert_allclose(loss, -model.log_prob(x) + logdets, rtol=1e-10)
    np.testing.assert_allclose(aux["nll_without_snf_logdet"], loss)
    np.testing.assert_allclose(aux["recon_error"], 0.0, atol=1e-18)  # R = W^-1


def _conv_model(w, r, shape, scale=1.0, lam=1.0):
    layer = _set(SelfNormConv(shape, key=jax.random.key(0), kernel_size=w.shape[-1]), w, r)
    return _flow([layer], shape, recon_loss_weight=lam, nll_grad_scale=scale)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_conv_selfnorm_gradient_equals_exact_when_R_is_the_inverse(kernel_size):
    # The inverse of a zero-padded k x k convolution is a convolution only when
    # the kernel is centre-only; then every tap's gradient must match.
    c, shape = 3, (3, 4, 5)
    m = jnp.eye(c) + 0.4 * jax.random.normal(jax.random.key(4), (c, c))
    w = jnp.zeros((c, c, kernel_size, kernel_size)).at[:, :, kernel_size // 2, kernel_size // 2].set(m)
    r = jnp.zeros_like(w).at[:, :, kernel_size // 2, kernel_size // 2].set(jnp.linalg.inv(m))
    model = _to64(_conv_model(w, r, shape))
    xs = jax.random.normal(jax.random.key(5), (3,) + shape)
    g_snf = snf_layers(grad_loss(model, xs))[0]
    g_exact = snf_layers(grad_nll(model, xs))[0]
    np.testing.assert_allclose(g_snf.weight, g_exact.weight, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(g_snf.bias, g_exact.bias, rtol=1e-9, atol=1e-11)
    assert float(jnp.max(jnp.abs(g_exact.weight))) > 1e-2  # not trivially zero


def _centre_only(model, seed):
    """Every self-normalizing conv of `model` (stacked ones too) set to a centre-only
    kernel M with R = M^-1 exactly (the inverse of such a convolution is one)."""
    rng = np.random.default_rng(seed)
    ws, rs = [], []
    for layer in snf_layers(model):
        w, r = np.zeros(layer.weight.shape), np.zeros(layer.weight.shape)
        c, k = layer.weight.shape[-3], layer.weight.shape[-1]
        for idx in np.ndindex(*layer.weight.shape[:-4]):
            m = np.eye(c) + 0.3 * rng.normal(size=(c, c))
            w[idx + (..., k // 2, k // 2)], r[idx + (..., k // 2, k // 2)] = m, np.linalg.inv(m)
        ws.append(jnp.asarray(w))
        rs.append(jnp.asarray(r))
    model = eqx.tree_at(lambda m: [l.weight for l in snf_layers(m)], model, ws)
    return eqx.tree_at(lambda m: [l.inv_weight for l in snf_layers(m)], model, rs)


def test_stacked_layers_in_a_scan_get_the_selfnorm_gradient():
    # The CNN config stacks its repeated (conv, activation) blocks into lax.scan;
    # every layer's W gradient must still equal the exact one when R = W^-1
    # (a regression: the stacked layers once lost part of their log-det gradient).
    from zoo.bijections.base import Scan
    from zoo_selfnorm.models import SelfNormCNNConfig

    config = SelfNormCNNConfig(num_blocks=2, nll_grad_scale=1.0, recon_loss_weight=0.0)
    model = config.build(input_shape=(1, 4, 4), key=jax.random.key(0))
    model = _centre_only(_to64(model), 1)
    assert any(isinstance(n, Scan) for n in jax.tree.leaves(model, is_leaf=lambda n: isinstance(n, Scan)))
    assert len(stacked := [l for l in snf_layers(model) if l.weight.ndim == 5]) >= 2, stacked
    xs = jax.random.uniform(jax.random.key(2), (3, 1, 4, 4), dtype=jnp.float64)
    g_snf, g_exact = snf_layers(grad_loss(model, xs)), snf_layers(grad_nll(model, xs))
    for ls, le in zip(g_snf, g_exact):
        np.testing.assert_allclose(ls.weight, le.weight, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ls.bias, le.bias, rtol=1e-9, atol=1e-9)
    assert float(jnp.max(jnp.abs(g_exact[0].weight))) > 1.0
    # the reconstruction errors of stacked layers are still read off per layer
    model = eqx.tree_at(lambda m: snf_layers(m)[0].inv_weight, model, 1.1 * snf_layers(model)[0].inv_weight)
    _, aux = eqx.filter_jit(lambda m, x: m.loss(x))(model, xs[0])  # one compile, not op by op
    rec = np.asarray(aux["recon_error"])
    assert rec.shape == (6,) and rec[0] > 1e-3 and np.all(np.abs(rec[3:]) < 1e-18), rec


def test_selfnorm_glow_mixing_in_scanned_steps_gets_the_selfnorm_gradient():
    # selfnorm_glow's 1 x 1 mixing layers sit inside Glow's scanned steps, next to
    # couplings with a hand-written (reverse-mode) gradient; with R = W^-1 the
    # self-normalized W gradient is the exact one (the stacked layers once got
    # about none of their log-det gradient).
    model = zoo.create_model("selfnorm_glow", key=jax.random.key(0), input_shape=(1, 8, 8), levels=2, depth=3,
                             width=16, nll_grad_scale=1.0, recon_loss_weight=0.0)
    model = _to64(model)
    inverses = [jnp.linalg.inv(l.weight[..., 0, 0])[..., None, None] for l in snf_layers(model)]
    model = eqx.tree_at(lambda m: [l.inv_weight for l in snf_layers(m)], model, inverses)
    assert [l.weight.shape[0] for l in snf_layers(model)] == [3, 3]  # stacked
    xs = jax.random.uniform(jax.random.key(1), (3, 1, 8, 8), dtype=jnp.float64)
    for ls, le in zip(snf_layers(grad_loss(model, xs)), snf_layers(grad_nll(model, xs))):
        np.testing.assert_allclose(ls.weight, le.weight, rtol=1e-9, atol=1e-9)
        assert float(jnp.max(jnp.abs(le.weight))) > 1.0


def test_conv_logdet_rule_is_the_trace_gradient_with_R_for_the_inverse():
    # d log|det M(W)| / dW = sum over positions of M^-T; the rule replaces M^-1
    # by the convolution matrix of R: the gradient of tr(R_mat M(W)), boundary
    # taps included.
    c, shape, k = 2, (2, 4, 3), 3
    w = jax.random.normal(jax.random.key(6), (c, c, k, k))
    r = jax.random.normal(jax.random.key(7), (c, c, k, k))
    layer = SelfNormConv(shape, key=jax.random.key(0))
    rule = jax.grad(lambda w_: snf_logdet(layer._grad_fn(), layer._grad_fn(), 1.0, w_, r))(w)
    want = jax.grad(lambda w_: jnp.trace(conv_matrix(r, shape) @ conv_matrix(w_, shape)))(w)
    np.testing.assert_allclose(rule, want, rtol=1e-10, atol=1e-12)
    rule_r = jax.grad(lambda r_: snf_logdet(layer._grad_fn(), layer._grad_fn(), 1.0, w, r_))(r)
    want_r = -jax.grad(lambda r_: jnp.trace(conv_matrix(r_, shape) @ conv_matrix(w, shape)))(r)
    np.testing.assert_allclose(rule_r, want_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(tap_counts(3, 4, 3), [[6, 9, 6], [8, 12, 8], [6, 9, 6]])  # (H-|a-1|)(W-|b-1|)


@pytest.mark.parametrize("kind", ["dense", "conv3", "conv1_sym", "dense_onlyR", "dense_exactgrad"])
def test_reconstruction_gradient_matches_its_definition(kind):
    key = jax.random.split(jax.random.key(8), 3)
    opts = {}
    if kind.startswith("dense"):
        shape = (4,)
        layer = SelfNormDense(shape, key=key[0])
        w = jnp.eye(4) + 0.3 * jax.random.normal(key[1], (4, 4))
        r = jnp.eye(4) + 0.3 * jax.random.normal(key[2], (4, 4))
    else:
        k = 3 if kind == "conv3" else 1
        shape = (2, 3, 4)
        layer = SelfNormConv(shape, key=key[0], kernel_size=k)
        w = 0.5 * jax.random.normal(key[1], (2, 2, k, k))
        r = 0.5 * jax.random.normal(key[2], (2, 2, k, k))
    opts["sym_recon_grad"] = kind.endswith("sym")
    opts["only_R_recon"] = kind.endswith("onlyR")
    opts["modified_grad"] = not kind.endswith("exactgrad")
    lam = 3.0
    xs = jax.random.normal(jax.random.key(9), (4,) + shape)
    base = _to64(_flow([_set(layer, w, r)], shape, recon_loss_weight=0.0, **opts))
    weighted = _to64(_flow([_set(layer, w, r)], shape, recon_loss_weight=lam, **opts))
    g0 = snf_layers(grad_loss(base, xs))[0]
    g1 = snf_layers(grad_loss(weighted, xs))[0]
    ap = layer._apply

    def rec(w_, r_):
        def one(x):
            wx = ap(jax.lax.stop_gradient(w_) if opts["only_R_recon"] else w_, x)
            e = x - ap(r_, wx)
            out = jnp.sum(e**2)
            if opts["sym_recon_grad"]:
                z = ap(w_, x)
                e2 = jax.lax.stop_gradient(z) - ap(w_, ap(r_, z))
                out = 0.5 * (out + jnp.sum(e2**2))
            return out
        return jnp.mean(jax.vmap(one)(xs))

    gw, gr = jax.grad(rec, argnums=(0, 1))(w, r)
    np.testing.assert_allclose(g1.weight - g0.weight, lam * gw, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(g1.inv_weight - g0.inv_weight, lam * gr, rtol=1e-8, atol=1e-10)
    assert float(jnp.max(jnp.abs(gr))) > 1e-3


def test_exact_grad_option_trains_W_with_the_exact_gradient():
    d = 4
    k = jax.random.split(jax.random.key(10), 3)
    layer = _set(SelfNormDense((d,), key=k[0]), jnp.eye(d) + 0.3 * jax.random.normal(k[1], (d, d)),
                 jnp.eye(d) + 0.3 * jax.random.normal(k[2], (d, d)))  # R is not the inverse
    model = _to64(_flow([layer, SmoothLeakyReLU(), SelfNormDense((d,), key=k[2])], (d,), recon_loss_weight=0.0,
                        modified_grad=False))
    xs = jax.random.normal(jax.random.key(11), (3, d))
    g = snf_layers(grad_loss(model, xs))
    ge = snf_layers(grad_nll(model, xs))
    np.testing.assert_allclose(g[0].weight, ge[0].weight, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(g[0].inv_weight, 0.0)  # R learns from the reconstruction loss only


# ------------------------------------------------- reconstruction errors, GECO


def test_recon_errors_in_aux_are_each_layers_error():
    d = 5
    k = jax.random.split(jax.random.key(12), 6)
    mats = [jnp.eye(d) + 0.2 * jax.random.normal(kk, (d, d)) for kk in k[:4]]
    l1 = _set(SelfNormDense((d,), key=k[4]), mats[0], mats[1])
    l2 = _set(SelfNormDense((d,), key=k[5]), mats[2], mats[3])
    model = _to64(_flow([l1, SmoothLeakyReLU(), l2], (d,)))
    x = jax.random.normal(jax.random.key(13), (d,))
    _, aux = model.loss(x)
    h1 = x
    h2 = SmoothLeakyReLU().forward(mats[0] @ x + snf_layers(model)[0].bias)[0]
    want = [jnp.sum((h - r @ (w @ h)) ** 2) for h, w, r in [(h1, mats[0], mats[1]), (h2, mats[2], mats[3])]]
    np.testing.assert_allclose(aux["recon_error"], want, rtol=1e-10)
    np.testing.assert_allclose(aux["recon_error_mean"], np.mean(want), rtol=1e-10)


def test_geco_update_rule_by_hand():
    lam, ema = geco_update(jnp.asarray(2.0), jnp.asarray(-1.0), jnp.asarray(0.5), lr=0.1, alpha=0.9, tolerance=0.0)
    np.testing.assert_allclose([lam, ema], [2.0 * np.exp(0.1 * 0.5), 0.5])  # first step: ema = rec
    lam2, ema2 = geco_update(lam, ema, jnp.asarray(0.3), lr=0.1, alpha=0.9, tolerance=0.2)
    e = 0.9 * 0.5 + 0.1 * 0.3
    np.testing.assert_allclose([lam2, ema2], [2.0 * np.exp(0.05) * np.exp(0.1 * (e - 0.2)), e])


def test_geco_after_step_updates_stacked_layers_per_layer():
    # 3 identical (dense, SLR) blocks: Chain stacks them into one scan, so
    # lambda / EMA are (3,) arrays inside one module.
    d = 3
    layers = []
    for k in jax.random.split(jax.random.key(14), 3):
        layers += [SelfNormDense((d,), key=k), SmoothLeakyReLU()]
    flow = Flow(Chain(layers), StandardNormal((d,)))
    model = SelfNormModel(configure_selfnorm(flow, recon_loss_weight=2.0), geco_lr=0.5, geco_alpha=0.8)
    (stacked,) = snf_layers(model)
    assert stacked.recon_weight.shape == (3,)
    new = model.after_step({"recon_error": jnp.array([0.1, 0.2, 0.4])}, step=jnp.asarray(0))
    new = new.after_step({"recon_error": jnp.array([0.3, 0.0, 0.4])}, step=jnp.asarray(1))
    (layer,) = snf_layers(new)
    ema = 0.8 * np.array([0.1, 0.2, 0.4]) + 0.2 * np.array([0.3, 0.0, 0.4])
    np.testing.assert_allclose(layer.recon_ema, ema, rtol=1e-6)
    np.testing.assert_allclose(layer.recon_weight, 2.0 * np.exp(0.5 * np.array([0.1, 0.2, 0.4])) * np.exp(0.5 * ema),
                               rtol=1e-6)
    # the training loss sees each stacked layer's own error, and lambda gets no gradient
    x = jax.random.uniform(jax.random.key(15), (d,))
    _, aux = new.loss(x)
    assert aux["recon_error"].shape == (3,)
    g = snf_layers(eqx.filter_grad(lambda m: m.loss(x)[0])(new))[0]
    np.testing.assert_array_equal(g.recon_weight, 0.0)
    np.testing.assert_array_equal(g.recon_ema, 0.0)


# --------------------------------------------------- exact conv log-det, solve


@partial(jax.jit, static_argnums=1)
def _block_vs_dense(kern, shape, y):
    sign, dense = jnp.linalg.slogdet(conv_matrix(kern, shape))
    g_blocks = jax.grad(lambda q: conv_logdet_blocks(q, shape))(kern)
    g_dense = jax.grad(lambda q: conv_logdet_dense(q, shape))(kern)
    return dict(sign=sign, dense=dense, blocks=conv_logdet_blocks(kern, shape), via_dense=conv_logdet_dense(kern, shape),
                rec=conv2d_same(kern, conv_solve_blocks(kern, y)), g_blocks=g_blocks, g_dense=g_dense)


# (5, 4): W < H; (6, 9): transposed first; (5, 7) and (2, 3) with k = 5: H not a
# multiple of r = 2 (identity padding); (3, 3) with k = 1: H*W*slogdet.
@pytest.mark.parametrize("c,h,w,k", [(2, 5, 4, 3), (1, 6, 9, 3), (2, 5, 7, 5), (2, 2, 3, 5), (2, 3, 3, 1)])
def test_block_lu_conv_logdet_and_solve_match_the_dense_matrix(c, h, w, k):
    kern = 0.3 * jax.random.normal(jax.random.key(16), (c, c, k, k))
    kern = kern.at[:, :, k // 2, k // 2].add(jnp.eye(c))
    y = jax.random.normal(jax.random.key(17), (c, h, w))
    out = _block_vs_dense(kern, (c, h, w), y)
    assert out["sign"] != 0
    np.testing.assert_allclose(out["blocks"], out["dense"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out["via_dense"], out["dense"], rtol=1e-12)
    np.testing.assert_allclose(out["rec"], y, rtol=1e-9, atol=1e-10)
    # the exact gradient through the block method equals the dense one
    np.testing.assert_allclose(out["g_blocks"], out["g_dense"], rtol=1e-8, atol=1e-10)


def test_conv_variants_conform():
    shape = (2, 5, 3)
    x = jax.random.normal(jax.random.key(18), shape)
    check_bijection(SelfNormConv(shape, key=jax.random.key(0), kernel_size=5), x)  # padded blocks
    check_bijection(zoo.create_layer("conv", key=jax.random.key(1), shape=shape, logdet_method="dense"), x)


def test_approximate_inverse_is_exact_when_R_is_the_inverse_and_close_at_init():
    layer = _to64(zoo.create_layer("selfnorm_conv1x1", key=jax.random.key(19), shape=(4, 3, 3)))
    y = jax.random.normal(jax.random.key(20), (4, 3, 3))
    np.testing.assert_allclose(layer.approx_inverse(y)[0], layer.inverse(y)[0], atol=1e-12)  # orthogonal init
    conv = _to64(zoo.create_layer("selfnorm_conv", key=jax.random.key(21), shape=(2, 4, 4)))
    err = jnp.max(jnp.abs(conv.approx_inverse(y[:2, :3, :3].repeat(2, 1)[:, :4, :4])[0] -
                          conv.inverse(y[:2, :3, :3].repeat(2, 1)[:, :4, :4])[0]))
    assert float(err) < 0.1  # identity + small noise: R = flip(W) ~ W^-1


# --------------------------------------------------------------- activations


def test_slr_inverse_to_tolerance_far_into_both_tails():
    slr = SmoothLeakyReLU(alpha=0.3)
    x = jnp.array([-300.0, -40.0, -3.0, -0.2, 0.0, 0.7, 5.0, 80.0])
    y, ld = slr.forward(x)
    np.testing.assert_allclose(slr.inverse(y)[0], x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ld, jnp.sum(jnp.log(0.3 + 0.7 * jax.nn.sigmoid(x))), rtol=1e-12)
    np.testing.assert_allclose(y[-1], 80.0, rtol=1e-12)  # slope 1 for large x
    np.testing.assert_allclose(y[0], -90.0, rtol=1e-12)  # slope 0.3 far below


def test_llr_and_selu_by_hand():
    llr = eqx.tree_at(lambda l: l.slope_logit, LearnableLeakyReLU(), jnp.asarray(0.0))
    y, ld = llr.forward(jnp.array([-2.0, 3.0]))
    np.testing.assert_allclose(y, [-2.0, 3.0])  # slope sigmoid(0) + 0.5 = 1
    assert float(ld) == 0.0
    llr = eqx.tree_at(lambda l: l.slope_logit, llr, jnp.asarray(np.log(0.25 / 0.75)))  # slope 0.75
    y, ld = llr.forward(jnp.array([-2.0, 3.0, -1.0]))
    np.testing.assert_allclose(y, [-1.5, 3.0, -0.75])
    np.testing.assert_allclose(ld, 2 * np.log(0.75))
    selu = SELU()
    y, ld = selu.forward(jnp.array([-1.0, 2.0]))
    np.testing.assert_allclose(y, [1.0507 * 1.6733 * (np.exp(-1) - 1), 2 * 1.0507], rtol=1e-12)
    np.testing.assert_allclose(ld, np.log(1.0507 * 1.6733) - 1 + np.log(1.0507), rtol=1e-12)


def test_spline_activation_has_reference_defaults():
    layer = zoo.create_layer("spline", key=jax.random.key(22), shape=(3, 2))
    assert layer.tail_bound == 10.0 and layer.params.shape == (3, 2, 14)  # 5 bins: 5 + 5 + 4
    assert 0.001 < float(jnp.std(layer.params)) < 0.03
    x = jnp.array([[-12.0, 0.3], [4.0, -9.0], [15.0, 0.0]])
    check_bijection(layer, x)


# --------------------------------------------------------------------- models


def test_selfnorm_glow_uses_selfnorm_mixing_inside_the_scanned_steps():
    model = zoo.create_model("selfnorm_glow", key=jax.random.key(23), input_shape=(1, 8, 8), levels=2, depth=3,
                             width=4, recon_loss_weight=7.0)
    layers = snf_layers(model)
    assert [l.weight.shape for l in layers] == [(3, 4, 4, 1, 1), (3, 8, 8, 1, 1)]  # (depth, C, C, 1, 1)
    np.testing.assert_array_equal(layers[0].recon_weight, 7.0)
    x = jax.random.uniform(jax.random.key(24), (1, 8, 8))
    loss, aux = eqx.filter_jit(lambda m: m.loss(x))(model)
    assert aux["recon_error"].shape == (6,) and bool(jnp.all(aux["recon_error"] < 1e-8))  # R = W^T = W^-1
    assert np.isfinite(float(loss))
    geco = zoo.create_model("selfnorm_glow", key=jax.random.key(23), input_shape=(1, 8, 8), levels=2, depth=2,
                            width=4, mixing="selfnorm_conv", mixing_kernel_size=5)
    assert snf_layers(geco)[0].weight.shape == (2, 4, 4, 5, 5)


def test_model_structure():
    fc = zoo.create_model("selfnorm_fc", key=jax.random.key(0), input_shape=(1, 28, 28))
    assert [l.weight.shape for l in snf_layers(fc)] == [(784, 784), (784, 784)]
    cnn = zoo.create_model("selfnorm_cnn", key=jax.random.key(0), input_shape=(1, 8, 8))
    # 3 blocks x 3 convs, the (conv, spline) pairs of a block stacked
    assert sum(int(np.prod(l.weight.shape[:-4])) for l in snf_layers(cnn)) == 9
