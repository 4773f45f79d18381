"""zoo.nn.Conv2d against jax.lax's convolution; the per-backend choice of every convolution."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.nn import Conv2d


@pytest.mark.parametrize("k", [1, 3, 5])
def test_conv2d_matches_lax_same_convolution(k):
    conv = Conv2d(3, 4, k, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 6, 5))
    want = jax.lax.conv_general_dilated(x[None], conv.weight, (1, 1), "SAME")[0] + conv.bias[:, None, None]
    np.testing.assert_allclose(conv(x), want, rtol=1e-5, atol=1e-5)


def test_conv2d_zero_init_and_even_kernel():
    conv = Conv2d(2, 3, 3, key=jax.random.key(0), zero_init=True)
    assert not np.any(conv(jnp.ones((2, 4, 4))))
    with pytest.raises(ValueError, match="odd"):
        Conv2d(2, 3, 2, key=jax.random.key(0))


def _conv_cases():
    from zoo_emerging.conv import conv_causal, conv_same
    from zoo_selfnorm.ops import conv2d_same

    from zoo.nn import Conv2d

    k = jax.random.split(jax.random.key(7), 4)
    for ksize in (1, 3):
        layer = Conv2d(3, 5, ksize, key=k[0])
        yield f"Conv2d k={ksize}", lambda w, x, layer=layer: eqx.tree_at(lambda m: m.weight, layer, w)(x[:3]), layer.weight
    from zoo_glow.nn import ConvHWC

    for c_in, c_out, ksize in ((3, 5, 3), (5, 3, 3), (3, 4, 1)):  # im2col, col2im and 1x1 paths
        layer = ConvHWC(c_in, c_out, ksize, key=k[0])
        conv = lambda w, x, layer=layer: jnp.transpose(  # noqa: E731
            eqx.tree_at(lambda m: m.weight, layer, w)(jnp.transpose(x, (1, 2, 0))[..., : w.shape[2]]), (2, 0, 1))
        yield f"glow ConvHWC {c_in}->{c_out} k={ksize}", conv, layer.weight
    yield "selfnorm conv2d_same", lambda w, x: conv2d_same(w, x[:3]), jax.random.normal(k[1], (3, 3, 3, 3))
    yield "emerging conv_same", lambda w, x: conv_same(x[:3], w), jax.random.normal(k[2], (5, 3, 3, 3))
    yield ("emerging conv_causal", lambda w, x: conv_causal(x[:3], w, skip_centre=True),
           jax.random.normal(k[3], (5, 3, 2, 2)))


def test_every_convolution_gives_the_same_values_and_gradients_by_lax_and_by_shifted_products():
    from zoo.nn import conv_impl

    x = jax.random.normal(jax.random.key(0), (5, 6, 5))
    for name, conv, w in _conv_cases():
        out = {}
        for impl in ("shifted", "lax"):
            with conv_impl(impl):  # traced inside the block; values and gradients in one compile
                f = lambda w, x: jnp.sum(jnp.sin(conv(w, x)))  # noqa: E731
                out[impl] = jax.jit(lambda w, x: (conv(w, x), jax.grad(f, argnums=(0, 1))(w, x)))(w, x)
        np.testing.assert_allclose(out["lax"][0], out["shifted"][0], rtol=1e-5, atol=1e-5, err_msg=name)
        for a, b in zip(out["lax"][1], out["shifted"][1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)


def test_the_convolution_is_chosen_by_backend_and_can_be_overridden(monkeypatch):
    from zoo import nn

    monkeypatch.delenv("ZOO_CONV_IMPL", raising=False)
    assert nn.current_conv_impl() == "shifted"  # XLA:CPU: lax.conv is slow inside scan
    monkeypatch.setattr(nn.jax, "default_backend", lambda: "gpu")
    assert nn.current_conv_impl() == "lax"
    with nn.conv_impl("shifted"):
        assert nn.current_conv_impl() == "shifted"
    monkeypatch.setenv("ZOO_CONV_IMPL", "shifted")
    assert nn.current_conv_impl() == "shifted"
    monkeypatch.setenv("ZOO_CONV_IMPL", "cudnn")
    with pytest.raises(ValueError, match="shifted"):
        nn.current_conv_impl()


def test_relu_equals_jax_relu_in_value_and_both_modes_and_keeps_no_mask_for_the_backward_pass():
    from zoo.nn import relu

    x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0])
    np.testing.assert_array_equal(relu(x), jax.nn.relu(x))
    f = lambda fn: lambda v: jnp.sum(jnp.sin(3 * fn(v)) * v)  # noqa: E731  a non-linear use of the output
    np.testing.assert_array_equal(jax.grad(f(relu))(x), jax.grad(f(jax.nn.relu))(x))  # derivative 0 at 0
    np.testing.assert_array_equal(jax.jacfwd(relu)(x), jax.jacfwd(jax.nn.relu)(x))
    np.testing.assert_array_equal(jax.hessian(f(relu))(x), jax.hessian(f(jax.nn.relu))(x))

    # what linearising a two-layer net keeps for the backward pass: with jax.nn.relu a boolean
    # mask beside each activation's output, with zoo's relu only float arrays
    w = jax.random.normal(jax.random.key(0), (4, 5))

    def net(fn):
        return lambda v: jnp.sum(w @ fn(w.T @ fn(w @ v)))

    def kept(fn):
        _, lin = jax.linearize(net(fn), x)
        return [a.dtype for a in jax.tree.leaves(lin) if hasattr(a, "dtype")]

    assert jnp.bool_ in kept(jax.nn.relu)
    assert jnp.bool_ not in kept(relu)
    assert len(kept(relu)) < len(kept(jax.nn.relu))
