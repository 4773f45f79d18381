"""Convolution exponential (Hoogeboom, Garcia Satorras, Tomczak & Welling 2020).

For a convolution M (a C x H x W -> C x H x W linear map given by a k x k
kernel, zero 'same' padding) the map x -> exp(M) x = sum_i M^i x / i! is
invertible with inverse exp(-M) and log|det exp(M)| = tr(M) =
H*W*sum_c K[c, c, centre]: exact and O(C), however the series is truncated.
The series is computed by repeated convolution; spectral normalisation keeps
||M|| <= coeff so a handful of terms suffice.

Training vs evaluation terms. A layer cannot know whether it is training, so
it carries a flag in Equinox's convention: the field `inference` (default
True) selects `terms_eval` terms; `eqx.nn.inference_mode(model, False)`
switches every such layer of a model to `terms_train` terms. The trainer does
that for its loss only, so the gradient step uses the cheap series while
`log_prob`, `inverse` and sampling use the accurate one.

Spectral normalisation. sigma ~ ||M||_2 is estimated by power iteration on
M^T M from a stored vector `power_vector` (under stop_gradient: never trained),
Miyato et al.'s sigma = u^T M v is differentiated through the kernel only,
and the kernel is scaled by 1 / max(1, sigma / coeff) (shrunk only when it is
too large, as in the reference code). Every call runs `power_iterations`
steps from the stored vector, so forward and inverse of one model always use
the same sigma; `after_update` (run by the trainer through `zoo.after_update`
after each optimiser update, in any container) stores the iterated vector, so
the estimate keeps converging during training as with PyTorch's in-place
buffers.
"""

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from zoo.bijections import Bijection, LULinear
from zoo_emerging.conv import conv_same, conv_same_transpose
from zoo_emerging.emerging import _check_image_shape

__all__ = ["ConvExp", "conv_exp", "power_iteration"]


def conv_exp(x: Array, kernel: Array, terms: int) -> Array:
    """exp(M) x truncated after the M^terms x / terms! term, M = conv_same(., kernel).
    A `fori_loop`, so the program (and compile time) does not grow with `terms`."""

    def add_term(i, carry):
        out, term = carry
        term = conv_same(term, kernel) / i.astype(x.dtype)
        return out + term, term

    return jax.lax.fori_loop(1, terms + 1, add_term, (x, x))[0]


def _normalise(v: Array) -> Array:
    return v / jnp.maximum(jnp.linalg.norm(v), 1e-12)


def power_iteration(kernel: Array, v: Array, iterations: int) -> tuple[Array, Array]:
    """`iterations` steps of v <- M^T M v / ||.|| from `v` (input-space, C x H x W).
    Returns (u, v): unit vectors with u ~ M v / ||M v|| (left and right top
    singular vectors of M as the iteration converges)."""
    def step(_, uv):
        v = _normalise(conv_same_transpose(uv[0], kernel))
        return _normalise(conv_same(v, kernel)), v

    v = _normalise(v)
    uv = (_normalise(conv_same(v, kernel)), v)
    if iterations == 1:  # the per-call default: no loop
        return step(0, uv)
    return jax.lax.fori_loop(0, iterations, step, uv)


_power_iteration_jit = jax.jit(power_iteration, static_argnums=2)


class ConvExp(Bijection):
    """Convolution exponential of a C x H x W image (forward = data -> base):
    an optional 1x1 convolution (`LULinear`, as in the reference code) followed
    by y = exp(M) x, M a spectrally normalised k x k convolution. The inverse is
    exp(-M) then the inverse 1x1 convolution; the log-det is the trace of M
    (plus the 1x1 convolution's), exact for any number of terms.

    Options: `kernel_size` (odd, 3), `terms_train` (6) / `terms_eval` (13,
    the reference's 2*6+1) series terms (see the module docstring for which is
    used when), `coeff` (0.9): the bound on ||M||_2, `power_iterations` (1)
    per call, `mix` (True): the 1x1 convolution in front.
    """

    mix: LULinear | None
    kernel: Array  # (C, C, k, k), before spectral normalisation
    power_vector: Array  # (C, H, W) power-iteration state, stop-gradient'd
    inference: bool  # True: terms_eval terms; eqx.nn.inference_mode(m, False) -> terms_train
    kernel_size: int = eqx.field(static=True)
    terms_train: int = eqx.field(static=True)
    terms_eval: int = eqx.field(static=True)
    coeff: float = eqx.field(static=True)
    power_iterations: int = eqx.field(static=True)
    example_shape: ClassVar = (2, 4, 4)

    def __init__(
        self,
        shape,
        *,
        key,
        kernel_size: int = 3,
        terms_train: int = 6,
        terms_eval: int = 13,
        coeff: float = 0.9,
        power_iterations: int = 1,
        mix: bool = True,
        inference: bool = True,
    ):
        c, h, w = _check_image_shape("ConvExp", shape)
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"ConvExp: kernel_size must be odd and >= 1, got {kernel_size}")
        if min(terms_train, terms_eval) < 1 or power_iterations < 0 or not coeff > 0:
            raise ValueError(
                "ConvExp: terms_train, terms_eval must be >= 1, power_iterations >= 0, coeff > 0; got "
                f"{terms_train}, {terms_eval}, {power_iterations}, {coeff}"
            )
        k_mix, k_kernel, k_vec = jax.random.split(key, 3)
        self.mix = LULinear(shape, key=k_mix) if mix else None
        kshape = (c, c, kernel_size, kernel_size)
        self.kernel = jax.random.normal(k_kernel, kshape) / math.prod(kshape[1:])
        # A converged start, so the first calls already see a good sigma.
        _, v = _power_iteration_jit(self.kernel, jax.random.normal(k_vec, (c, h, w)), 50)
        self.power_vector = v
        self.inference = inference
        self.kernel_size = kernel_size
        self.terms_train = terms_train
        self.terms_eval = terms_eval
        self.coeff = float(coeff)
        self.power_iterations = power_iterations

    @property
    def terms(self) -> int:
        return self.terms_eval if self.inference else self.terms_train

    def spectral_norm(self) -> Array:
        """The power-iteration estimate of ||M||_2 for the unnormalised kernel
        (differentiable in the kernel; the iteration vectors are constants)."""
        u, v = power_iteration(self.kernel, jax.lax.stop_gradient(self.power_vector), self.power_iterations)
        u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
        return jnp.sum(u * conv_same(v, self.kernel))

    def normalised_kernel(self) -> Array:
        """The kernel of M: scaled so that ||M||_2 <= coeff (by the estimate)."""
        return self.kernel / jnp.maximum(1.0, self.spectral_norm() / self.coeff)

    def _trace(self, kernel: Array, shape) -> Array:
        r = self.kernel_size // 2
        return shape[1] * shape[2] * jnp.trace(kernel[:, :, r, r])

    def forward(self, x):
        kernel = self.normalised_kernel()
        logdet = jnp.zeros((), x.dtype)
        if self.mix is not None:
            x, logdet = self.mix.forward(x)
        y = conv_exp(x, kernel, self.terms)
        return y, logdet + self._trace(kernel, x.shape)

    def inverse(self, y):
        kernel = self.normalised_kernel()
        x = conv_exp(y, -kernel, self.terms)
        logdet = -self._trace(kernel, y.shape)
        if self.mix is not None:
            x, ld_mix = self.mix.inverse(x)
            logdet = logdet + ld_mix
        return x, logdet

    def after_update(self) -> "ConvExp":
        # Advance the stored vector `power_iterations` steps against the updated kernel.
        _, v = power_iteration(self.kernel, self.power_vector, max(self.power_iterations, 1))
        return eqx.tree_at(lambda m: m.power_vector, self, jax.lax.stop_gradient(v))
