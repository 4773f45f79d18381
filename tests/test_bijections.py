"""The core bijections: every registered layer against the conformance kit, and
hand-checked values for the generic layers."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.bijections import (
    ActNorm,
    Affine,
    AffineCoupling,
    Bijection,
    Chain,
    Invert,
    Logit,
    LULinear,
    Permute,
    Reverse,
    Scan,
    Sigmoid,
    Squeeze,
    stack,
)
from zoo.bijections.spline import IDENTITY_DERIVATIVE, MIN_BIN, MIN_DERIVATIVE, rq_spline
from zoo.testing import check_bijection, example_input

KEY = jax.random.key(0)


@pytest.mark.parametrize("name", zoo.list_layers())
def test_every_registered_layer_conforms(name):
    layer_cls = zoo.get_layer(name)
    shape = layer_cls.example_shape
    layer = zoo.create_layer(name, key=KEY, shape=shape)
    check_bijection(layer, example_input(layer_cls, shape))


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda k: AffineCoupling((3, 4, 4), key=k, width=8), (3, 4, 4)),  # channel split of an image
        (lambda k: AffineCoupling((5,), key=k, scale="exp", split=2), (5,)),
        (lambda k: LULinear((3, 2, 2), key=k), (3, 2, 2)),  # acts as a 1x1 convolution
        (lambda k: ActNorm((4,)), (4,)),
        (lambda k: Invert(AffineCoupling((4,), key=k)), (4,)),
        (lambda k: Squeeze((1, 4, 6)), (1, 4, 6)),
    ],
)
def test_layer_variants_conform(make, shape):
    check_bijection(make(KEY), jax.random.normal(jax.random.key(2), shape))


class _WrongLogdet(Bijection):
    def forward(self, x):
        return 2.0 * x, jnp.zeros(())  # true log-det is size * log 2

    def inverse(self, y):
        return y / 2.0, jnp.zeros(())


class _WrongInverse(Bijection):
    def forward(self, x):
        return 2.0 * x, x.size * jnp.log(2.0)

    def inverse(self, y):
        return y / 3.0, -y.size * jnp.log(2.0)


def test_conformance_kit_catches_broken_bijections():
    with pytest.raises(AssertionError, match="slogdet"):
        check_bijection(_WrongLogdet(), jnp.ones(3))
    with pytest.raises(AssertionError, match="inverse"):
        check_bijection(_WrongInverse(), jnp.ones(3))


def _blocks(n, key, d=4):
    keys = jax.random.split(key, n)
    return [Chain([ActNorm((d,)), AffineCoupling((d,), key=k, width=8), Reverse()], scan=False) for k in keys]


def test_chain_stacks_repeated_layers_and_blocks():
    keys = jax.random.split(KEY, 8)
    same = Chain([AffineCoupling((4,), key=k, width=8) for k in keys])
    assert len(same.layers) == 1 and isinstance(same.layers[0], Scan) and same.layers[0].length == 8

    # A B A B A B (flat) is recognised as a repeated block of period 2.
    flat = []
    for k in keys[:3]:
        flat += [AffineCoupling((4,), key=k, width=8), Reverse()]
    alt = Chain(flat)
    assert len(alt.layers) == 1 and alt.layers[0].length == 3

    # Different widths cannot share a scan body.
    mixed = Chain([AffineCoupling((4,), key=keys[0], width=8), AffineCoupling((4,), key=keys[1], width=16)])
    assert len(mixed.layers) == 2 and not any(isinstance(layer, Scan) for layer in mixed.layers)


def test_scanned_chain_matches_python_loop():
    blocks = _blocks(5, KEY)
    x = jax.random.normal(jax.random.key(3), (4,))
    xs = jax.random.normal(jax.random.key(4), (16, 4)) * 3 + 1
    scanned, looped = Chain(blocks), Chain(blocks, scan=False)
    assert isinstance(scanned.layers[0], Scan) and len(looped.layers) == 5
    scanned, _ = scanned.data_init(xs)
    looped, _ = looped.data_init(xs)
    for a, b in zip(scanned.forward(x), looped.forward(x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    y = scanned.forward(x)[0]
    for a, b in zip(scanned.inverse(y), looped.inverse(y)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the 3rd layer of the scan is the 3rd block, initialised on what block 2 produced
    np.testing.assert_allclose(scanned.layers[0].layer(2).layers[0].loc, looped.layers[2].layers[0].loc, rtol=1e-5)
    check_bijection(scanned, x)


def test_scan_from_filter_vmap_and_stack_errors():
    n = 6
    made = Scan(eqx.filter_vmap(lambda k: AffineCoupling((4,), key=k, width=8))(jax.random.split(KEY, n)), n)
    check_bijection(made, jax.random.normal(KEY, (4,)))
    with pytest.raises(ValueError, match="differs"):
        stack([AffineCoupling((4,), key=KEY, width=8), AffineCoupling((4,), key=KEY, width=16)])
    with pytest.raises(TypeError, match="not a Bijection"):
        Chain([Reverse(), "layer"])


class _Refreshed(Bijection):
    """Identity whose `after_update` counts its calls: state the optimizer does not train."""

    count: jax.Array

    def __init__(self, count=0.0):
        self.count = jnp.asarray(count)

    def forward(self, x):
        return x, jnp.zeros((), x.dtype)

    def inverse(self, y):
        return y, jnp.zeros((), y.dtype)

    def after_update(self):
        assert self.count.shape == (), "after_update must see one layer, not a stack"
        return _Refreshed(self.count + 1)


class _Wrapper(eqx.Module):  # a container that is no Bijection, like a model wrapper
    parts: dict


def test_after_update_reaches_every_overriding_layer_and_leaves_others_alone():
    # every slice of nested Scans (3 x 2 stacked counters), one under Invert, one plain
    block = Chain([_Refreshed(), Affine((2,), shift=jnp.ones(2))], scan=False)
    nested = stack([stack([block, block]) for _ in range(3)])
    plain = Chain([Affine((2,)), Reverse()] * 2)  # a Scan with nothing to refresh inside
    assert isinstance(nested.stacked, Scan) and isinstance(plain.layers[0], Scan)
    model = _Wrapper({"nested": nested, "inverted": Invert(_Refreshed(5.0)), "plain": plain})
    new = eqx.filter_jit(zoo.after_update)(model)
    np.testing.assert_array_equal(new.parts["nested"].stacked.stacked.layers[0].count, np.ones((3, 2)))
    np.testing.assert_array_equal(new.parts["nested"].stacked.stacked.layers[1].shift, np.ones((3, 2, 2)))
    assert float(new.parts["inverted"].bijection.count) == 6.0
    # layers without an override come back with the very same leaves (no copy, no vmap)
    new = zoo.after_update(model)
    assert all(a is b for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(new.parts["plain"])))
    affine = Affine((2,), shift=jnp.ones(2))
    assert affine.after_update() is affine
    assert all(a is b for a, b in zip(jax.tree.leaves(affine), jax.tree.leaves(zoo.after_update(affine))))


def test_actnorm_data_init_standardises_per_channel_globally():
    xs = jax.random.normal(KEY, (32, 3, 4, 4)) * jnp.array([1.0, 5.0, 0.1])[:, None, None] + jnp.array(
        [2.0, -1.0, 0.5]
    )[:, None, None]
    layer, ys = ActNorm((3, 4, 4)).data_init(xs)
    np.testing.assert_allclose(jnp.mean(ys, axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(ys, axis=(0, 2, 3)), 1.0, atol=1e-4)
    np.testing.assert_allclose(layer.loc, jnp.mean(xs, axis=(0, 2, 3)), rtol=1e-5)
    # through a Flow and the top-level function, under jit
    flow = zoo.Flow(Chain([ActNorm((3, 4, 4))]), zoo.distributions.StandardNormal((3, 4, 4)))
    inited = eqx.filter_jit(zoo.data_init)(flow, xs)
    np.testing.assert_allclose(inited.bijection.layers[0].log_scale, jnp.log(jnp.std(xs, axis=(0, 2, 3))), rtol=1e-4)
    # log-det counts every pixel: -H*W*sum(log_scale)
    _, ld = layer.forward(xs[0])
    np.testing.assert_allclose(ld, -16 * jnp.sum(layer.log_scale), rtol=1e-6)


def test_lu_linear_is_the_matrix_it_claims():
    layer = LULinear((5,), key=KEY)
    layer = eqx.tree_at(lambda m: m.log_s, layer, layer.log_s + 0.3)
    w = layer.weight()
    x = jax.random.normal(KEY, (5,))
    y, ld = layer.forward(x)
    np.testing.assert_allclose(y, w @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ld, jnp.linalg.slogdet(w)[1], rtol=1e-5)
    # the initial matrix is a rotation, as in Glow
    w0 = LULinear((5,), key=KEY).weight()
    np.testing.assert_allclose(w0 @ w0.T, jnp.eye(5), atol=1e-5)


def test_squeeze_moves_2x2_patches_into_channels():
    x = jnp.arange(16.0).reshape(1, 4, 4)
    y, ld = Squeeze().forward(x)
    assert y.shape == (4, 2, 2) and ld == 0
    # channel k = (row offset, col offset) in raster order; top-left patch is [0, 1, 4, 5]
    np.testing.assert_array_equal(y[:, 0, 0], [0.0, 1.0, 4.0, 5.0])
    np.testing.assert_array_equal(y[0], [[0.0, 2.0], [8.0, 10.0]])
    np.testing.assert_array_equal(Squeeze().inverse(y)[0], x)
    with pytest.raises(ValueError, match="divisible"):
        Squeeze((1, 3, 4))


def test_logit_and_sigmoid_hand_values():
    alpha = 0.05
    y, ld = Logit(alpha=alpha).forward(jnp.array([0.5]))
    assert float(y[0]) == pytest.approx(0.0, abs=1e-7)
    # dy/dx = (1 - 2a) / (s (1 - s)) at s = 0.5
    assert float(ld) == pytest.approx(math.log(0.9 / 0.25), rel=1e-6)
    x = jnp.array([0.0, 1.0])
    y, _ = Logit(alpha=alpha).forward(x)
    np.testing.assert_allclose(y, [math.log(0.05 / 0.95), math.log(0.95 / 0.05)], rtol=1e-5)
    z, ld = Sigmoid().forward(jnp.array([0.0]))
    assert float(z[0]) == 0.5 and float(ld) == pytest.approx(math.log(0.25))
    with pytest.raises(ValueError, match="alpha"):
        Logit(alpha=0.5)


def test_affine_and_permute_values():
    layer = Affine((2,), shift=jnp.array([1.0, -1.0]), log_scale=jnp.log(jnp.array([2.0, 0.5])))
    y, ld = layer.forward(jnp.array([1.0, 4.0]))
    np.testing.assert_allclose(y, [3.0, 1.0])
    assert float(ld) == pytest.approx(0.0, abs=1e-6)
    p = Permute(perm=[2, 0, 1])
    y, _ = p.forward(jnp.array([10.0, 20.0, 30.0]))
    np.testing.assert_array_equal(y, [30.0, 10.0, 20.0])
    np.testing.assert_array_equal(p.inverse(y)[0], [10.0, 20.0, 30.0])
    with pytest.raises(ValueError, match="not a permutation"):
        Permute(perm=[0, 0, 1])
    # integer permutations are not trainable parameters
    assert not jax.tree.leaves(eqx.filter(p, eqx.is_inexact_array))



# ------------------------------------------------------------ rational-quadratic spline


def _rq_knots(u, bound):
    """Knots from unnormalised bin sizes: softmax, at least MIN_BIN of the range each."""
    e = np.exp(u - u.max())
    sizes = MIN_BIN + (1 - MIN_BIN * len(u)) * e / e.sum()
    return np.concatenate([[-bound], -bound + 2 * bound * np.cumsum(sizes)[:-1], [bound]])


def _rq_reference(v, params, bound, inverse=False):
    """Durkan et al. (2019), one element, NumPy float64, slope 1 at +-bound
    and the identity outside; the inverse by bisection on the forward map,
    not by its quadratic. Returns (value, log|d value / d v|)."""
    k = (len(params) + 1) // 3
    xk, yk = _rq_knots(params[:k], bound), _rq_knots(params[k : 2 * k], bound)
    dk = np.concatenate([[1.0], MIN_DERIVATIVE + np.log1p(np.exp(params[2 * k :])), [1.0]])

    def f(x):
        if not -bound < x < bound:
            return x, 0.0
        i = min(int(np.searchsorted(xk, x, side="right")) - 1, k - 1)
        w, h = xk[i + 1] - xk[i], yk[i + 1] - yk[i]
        s, xi = h / w, (x - xk[i]) / w
        den = s + (dk[i + 1] + dk[i] - 2 * s) * xi * (1 - xi)
        y = yk[i] + h * (s * xi**2 + dk[i] * xi * (1 - xi)) / den
        slope = s**2 * (dk[i + 1] * xi**2 + 2 * s * xi * (1 - xi) + dk[i] * (1 - xi) ** 2) / den**2
        return y, math.log(slope)

    if not inverse:
        return f(v)
    if not -bound < v < bound:
        return v, 0.0
    lo, hi = -bound, bound
    for _ in range(200):  # past float64 resolution: lo and hi end adjacent
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if f(mid)[0] > v else (mid, hi)
    x = 0.5 * (lo + hi)
    return x, -f(x)[1]


def test_rq_spline_matches_the_paper_formula_in_the_bins_at_the_knots_and_in_the_tails():
    rng = np.random.default_rng(3)
    k, bound = 5, 2.5
    with jax.enable_x64(True):
        for inverse in (False, True):
            rows, points = [], []
            for p in rng.normal(size=(4, 3 * k - 1)) * 1.5:
                knots = _rq_knots(p[k : 2 * k] if inverse else p[:k], bound)  # of the side mapped from
                pts = np.concatenate([rng.uniform(-bound, bound, 6), knots, [-4.0, 7.5]])
                rows += [p] * len(pts)
                points += list(pts)
            v, p = jnp.asarray(points), jnp.asarray(np.stack(rows))
            out, ld = rq_spline(v, p, tail_bound=bound, inverse=inverse)
            want = np.array([_rq_reference(a, q, bound, inverse) for a, q in zip(points, rows)])
            np.testing.assert_allclose(out, want[:, 0], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(ld, want[:, 1], rtol=1e-10, atol=1e-10)
            # the shift inside the softplus is a shift of the derivative parameters
            out_s, ld_s = rq_spline(v, p, tail_bound=bound, inverse=inverse, derivative_shift=IDENTITY_DERIVATIVE)
            want_s = rq_spline(v, p.at[:, 2 * k :].add(IDENTITY_DERIVATIVE), tail_bound=bound, inverse=inverse)
            np.testing.assert_allclose(out_s, want_s[0], rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(ld_s, want_s[1], rtol=1e-12, atol=1e-12)
        # all-zero parameters with that shift: the identity (a zero-initialised coupling)
        x = jnp.linspace(-3.0, 3.0, 13)
        y, ld = rq_spline(x, jnp.zeros((13, 3 * k - 1)), tail_bound=bound, derivative_shift=IDENTITY_DERIVATIVE)
        np.testing.assert_allclose(y, x, atol=1e-12)
        np.testing.assert_allclose(ld, 0.0, atol=1e-12)
