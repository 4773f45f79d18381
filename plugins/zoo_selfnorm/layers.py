"""Self-normalizing linear layers (Keller et al. 2021) and their exact twins.

A self-normalizing layer z = W x + b also holds a learned approximate inverse
R ~ W^-1. Two code paths:

* `forward` / `inverse` (evaluation, sampling with the true inverse, the
  Bijection contract): exact. log|det| by slogdet (dense), H*W*slogdet
  (1 x 1 convolution) or the block-tridiagonal LU of the convolution operator
  (k x k, `ops.conv_logdet_blocks`, exact and O(H) instead of O((CHW)^3));
  inverse by solving.
* `train_forward(x, probe)` (used only by `SelfNormModel.loss`): no inverse,
  no determinant. Its log-det VALUE is 0 (a placeholder), but its gradients
  are the self-normalized ones:
    d/dW: g (delta_z x^T - Rbar^T)          (W^-T replaced by R^T)
    d/dR: g (-delta_x z^T + Wbar^T)         (the same rule in the R-parametrisation, W = R^-1)
  with g = `nll_grad_scale` (the reference uses 1/2, the average of the W- and
  R-parametrised gradients; 1 gives exactly the exact gradient when R = W^-1)
  and, for convolutions, Rbar^T = flip(R) * (number of positions each tap
  sees) -- the exact gradient of log|det M| with M^-1 replaced by the
  convolution R. On top, the reconstruction loss r = ||x - R W x||^2 on the
  stop-gradient input (`sym_recon_grad`: the mean with ||z - W R z||^2;
  `only_R_recon`: W x also stop-gradient) enters with weight lambda
  (`recon_weight`, an array so GECO can adapt it; used under stop_gradient).
  Both are implemented with `jax.custom_jvp` rules whose transposes are
  batched matrix products (a custom_vjp on one vmapped example would form one
  D x D outer product per example). `modified_grad=False` trains with the
  exact log-det and gradient instead (R then learns from r only).
"""

import math
from functools import partial
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from zoo.bijections import Bijection
from zoo_selfnorm.ops import (
    conv2d_same, conv_logdet_blocks, conv_logdet_dense, conv_solve_blocks, dense_apply, flip_kernel,
    tap_counts, xavier_normal_std,
)

__all__ = [
    "AbstractSelfNorm", "SelfNormDense", "SelfNormConv", "selfnorm_conv1x1", "Dense", "Conv",
    "snf_core", "snf_logdet",
]


# ------------------------------------------------------------ gradient rules


@partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3))
def snf_core(apply, scale_w, scale_r, only_r, x, w, r, b):
    """(y, rec) = (W x + b, ||x - R W x||^2) whose derivatives are the
    self-normalized ones (see module docstring); `x` is stop-gradient in rec."""
    z = apply(w, x)
    e = x - apply(r, z)
    return z + b, jnp.sum(e * e)


@snf_core.defjvp
def _snf_core_jvp(apply, scale_w, scale_r, only_r, primals, tangents):
    x, w, r, b = primals
    dx, dw, dr, db = tangents
    z = apply(w, x)
    e = x - apply(r, z)
    u1 = apply(dw, x)  # dW x
    u2 = apply(dr, z)  # dR z
    # One W-product carries both the input tangent and the R rule, so the
    # transpose computes W^T delta_z once for delta_x and for d/dR.
    dy = apply(w, dx - scale_r * u2) + scale_w * u1 + db
    dxhat = u2 if only_r else u2 + apply(r, u1)
    return (z + b, jnp.sum(e * e)), (dy, -2.0 * jnp.sum(e * dxhat))


@partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def snf_logdet(grad_w, grad_r, scale, w, r):
    """Placeholder log|det W|: value 0, derivative scale * (grad_w(R) . dW - grad_r(W) . dR).
    Only W and R enter (no example), so under vmap it is evaluated once per batch."""
    return jnp.zeros((), w.dtype)


@snf_logdet.defjvp
def _snf_logdet_jvp(grad_w, grad_r, scale, primals, tangents):
    w, r = primals
    dw, dr = tangents
    d = scale * (jnp.sum(grad_w(r) * dw) - jnp.sum(grad_r(w) * dr))
    return jnp.zeros((), w.dtype), d


# --------------------------------------------------------------- base class


class AbstractSelfNorm(Bijection):
    """Shared logic of the self-normalizing dense and convolutional layers."""

    weight: eqx.AbstractVar[Array]
    inv_weight: eqx.AbstractVar[Array]
    bias: eqx.AbstractVar[Array]
    recon_weight: eqx.AbstractVar[Array]
    recon_ema: eqx.AbstractVar[Array]
    modified_grad: eqx.AbstractVar[bool]
    nll_grad_scale: eqx.AbstractVar[float]
    sym_recon_grad: eqx.AbstractVar[bool]
    only_R_recon: eqx.AbstractVar[bool]
    weight_ndim: eqx.AbstractClassVar[int]

    # operator-specific pieces (plain functions: they are static arguments of the rules)
    def _op(self):
        """The linear map (w, x) -> w x as a module-level function."""
        raise NotImplementedError

    def _grad_fn(self):
        """k -> the transposed operator's parameters weighted by tap counts: applied to R
        it is d log|det W| / dW with W^-1 replaced by R; applied to W, -d log|det W| / dR
        in the R-parametrisation with R^-1 replaced by W."""
        raise NotImplementedError

    def _apply(self, w, x):
        return self._op()(w, x)

    def _bias(self, x):
        raise NotImplementedError

    def logdet(self) -> Array:
        """Exact log|det| of the layer's Jacobian."""
        raise NotImplementedError

    def _solve(self, y):
        raise NotImplementedError

    # Bijection contract: exact
    def forward(self, x):
        return self._apply(self.weight, x) + self._bias(x), self.logdet()

    def inverse(self, y):
        return self._solve(y - self._bias(y)), -self.logdet()

    def approx_inverse(self, y):
        """Fast inverse through R (what the reference samples with): O(D^2), no solve."""
        return self._apply(self.inv_weight, y - self._bias(y)), -self.logdet()

    def reconstruction_error(self, x):
        """||x - R W x||^2 for one example (no gradient rules)."""
        e = x - self._apply(self.inv_weight, self._apply(self.weight, x))
        return jnp.sum(e * e)

    # Training path: self-normalized gradient, no determinant, no inverse
    def train_forward(self, x, probe):
        """(y, ld) for `SelfNormModel.loss`: ld has value 0 but carries the
        log-det gradient rule, lambda * grad(rec), and `probe * rec` (so the
        loss's derivative w.r.t. `probe` is this layer's reconstruction error)."""
        w, r = self.weight, self.inv_weight
        xs = jax.lax.stop_gradient(x)
        b = self._bias(x)
        if self.modified_grad:
            s = self.nll_grad_scale
            y, rec = snf_core(self._op(), s, s, self.only_R_recon, x, w, r, b)
            ld = snf_logdet(self._grad_fn(), self._grad_fn(), s, w, r)
        else:  # exact gradient; R learns only from the reconstruction loss
            y = self._apply(w, x) + b
            ld = self.logdet()
            wx = self._apply(jax.lax.stop_gradient(w) if self.only_R_recon else w, xs)
            e = xs - self._apply(r, wx)
            rec = jnp.sum(e * e)
        if self.sym_recon_grad:
            z = self._apply(w, xs)
            e_sym = jax.lax.stop_gradient(z) - self._apply(w, self._apply(r, z))
            rec = 0.5 * (rec + jnp.sum(e_sym * e_sym))
        lam = jax.lax.stop_gradient(self.recon_weight)
        rec_value = jax.lax.stop_gradient(rec)
        ld = ld - lam * (rec - rec_value) - probe * rec_value
        return y, ld


def _transpose(k):
    return k.T


def _conv_grad(h, w, k):
    # tap counts are symmetric under the flip, so the same rule serves W and R
    return flip_kernel(k) * jnp.asarray(tap_counts(k.shape[-1], h, w), k.dtype)


def _snf_arrays(recon_loss_weight):
    # Strongly typed, as a training step returns them: a weak-typed init made the
    # trainer trace and compile its step a second time at step 2.
    dtype = jnp.result_type(float)
    return jnp.asarray(float(recon_loss_weight), dtype), jnp.asarray(-1.0, dtype)  # EMA < 0: not started


# ------------------------------------------------------------------- dense


class SelfNormDense(AbstractSelfNorm):
    """Self-normalizing fully connected layer z = W x + b on vectors (D,).
    Init as the reference: W = R = I, small random bias."""

    weight: Array
    inv_weight: Array
    bias: Array
    recon_weight: Array
    recon_ema: Array
    modified_grad: bool = eqx.field(static=True)
    nll_grad_scale: float = eqx.field(static=True)
    sym_recon_grad: bool = eqx.field(static=True)
    only_R_recon: bool = eqx.field(static=True)
    weight_ndim: ClassVar[int] = 2
    example_shape: ClassVar = (4,)

    def __init__(self, shape, *, key, recon_loss_weight: float = 1.0, modified_grad: bool = True,
                 nll_grad_scale: float = 0.5, sym_recon_grad: bool = False, only_R_recon: bool = False):
        if len(shape) != 1:
            raise ValueError(f"SelfNormDense: needs vectors (D,), got shape {tuple(shape)}")
        d = int(shape[0])
        self.weight = jnp.eye(d)
        self.inv_weight = jnp.eye(d)
        self.bias = math.sqrt(1.0 / d) * jax.random.normal(key, (d,))
        self.recon_weight, self.recon_ema = _snf_arrays(recon_loss_weight)
        self.modified_grad, self.nll_grad_scale = bool(modified_grad), float(nll_grad_scale)
        self.sym_recon_grad, self.only_R_recon = bool(sym_recon_grad), bool(only_R_recon)

    def _op(self):
        return dense_apply

    def _grad_fn(self):
        return _transpose

    def _bias(self, x):
        return self.bias

    def logdet(self):
        return jnp.linalg.slogdet(self.weight)[1]

    def _solve(self, y):
        return jnp.linalg.solve(self.weight, y)


class Dense(Bijection):
    """Exact twin of `SelfNormDense`: z = W x + b, log-det by slogdet, exact gradient
    (W = I at init, as the reference's exact FC model)."""

    weight: Array
    bias: Array
    example_shape: ClassVar = (4,)

    def __init__(self, shape, *, key):
        if len(shape) != 1:
            raise ValueError(f"Dense: needs vectors (D,), got shape {tuple(shape)}")
        d = int(shape[0])
        self.weight = jnp.eye(d)
        self.bias = math.sqrt(1.0 / d) * jax.random.normal(key, (d,))

    def forward(self, x):
        return self.weight @ x + self.bias, jnp.linalg.slogdet(self.weight)[1]

    def inverse(self, y):
        return jnp.linalg.solve(self.weight, y - self.bias), -jnp.linalg.slogdet(self.weight)[1]


# ------------------------------------------------------------ convolutions


def _conv_init(shape, kernel_size, key):
    c = int(shape[0])
    k_w, k_b = jax.random.split(key)
    if kernel_size == 1:  # random orthogonal 1 x 1 convolution, R = W^T = W^-1
        w = jnp.linalg.qr(jax.random.normal(k_w, (c, c)))[0][:, :, None, None]
        std = xavier_normal_std(c, c, 0.01)
    else:  # identity (dirac) plus small noise
        std = xavier_normal_std(c * kernel_size**2, c * kernel_size**2, 0.01)
        dirac = jnp.zeros((c, c, kernel_size, kernel_size)).at[:, :, kernel_size // 2, kernel_size // 2].set(jnp.eye(c))
        w = dirac + std * jax.random.normal(k_w, dirac.shape)
    return w, std * jax.random.normal(k_b, (c,))


def _check_image(name, shape, kernel_size):
    if len(shape) != 3:
        raise ValueError(f"{name}: needs C x H x W images, got shape {tuple(shape)}")
    if kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(f"{name}: kernel_size must be odd and >= 1, got {kernel_size}")


class SelfNormConv(AbstractSelfNorm):
    """Self-normalizing k x k convolution (stride 1, zero "same" padding, any odd k;
    k = 1 is a 1 x 1 convolution) on C x H x W images, C channels in and out.

    Init as the reference: k x k = identity + small noise, R = flip(W);
    1 x 1 = random orthogonal W, R = W^T. Exact log-det: H*W*slogdet for
    1 x 1, block-tridiagonal LU for k x k (`logdet_method="dense"` uses the
    dense matrix instead, O((CHW)^3), as the reference does).
    """

    weight: Array
    inv_weight: Array
    bias: Array
    recon_weight: Array
    recon_ema: Array
    shape: tuple[int, int, int] = eqx.field(static=True)
    modified_grad: bool = eqx.field(static=True)
    nll_grad_scale: float = eqx.field(static=True)
    sym_recon_grad: bool = eqx.field(static=True)
    only_R_recon: bool = eqx.field(static=True)
    logdet_method: str = eqx.field(static=True)
    weight_ndim: ClassVar[int] = 4
    example_shape: ClassVar = (2, 4, 3)

    def __init__(self, shape, *, key, kernel_size: int = 3, recon_loss_weight: float = 1.0,
                 modified_grad: bool = True, nll_grad_scale: float = 0.5, sym_recon_grad: bool = False,
                 only_R_recon: bool = False, logdet_method: Literal["blocks", "dense"] = "blocks"):
        _check_image("SelfNormConv", shape, kernel_size)
        if logdet_method not in ("blocks", "dense"):
            raise ValueError(f"SelfNormConv: logdet_method must be 'blocks' or 'dense', got {logdet_method!r}")
        self.shape = tuple(int(s) for s in shape)
        self.weight, self.bias = _conv_init(shape, kernel_size, key)
        self.inv_weight = flip_kernel(self.weight)
        self.recon_weight, self.recon_ema = _snf_arrays(recon_loss_weight)
        self.modified_grad, self.nll_grad_scale = bool(modified_grad), float(nll_grad_scale)
        self.sym_recon_grad, self.only_R_recon = bool(sym_recon_grad), bool(only_R_recon)
        self.logdet_method = logdet_method

    def _op(self):
        return conv2d_same

    def _grad_fn(self):
        return partial(_conv_grad, self.shape[1], self.shape[2])

    def _bias(self, x):
        return self.bias[:, None, None]

    def logdet(self):
        if self.logdet_method == "dense" and self.weight.shape[-1] > 1:
            return conv_logdet_dense(self.weight, self.shape)
        return conv_logdet_blocks(self.weight, self.shape)

    def _solve(self, y):
        return conv_solve_blocks(self.weight, y)


def selfnorm_conv1x1(shape, *, key, **options):
    """`SelfNormConv` with a 1 x 1 kernel (Glow's invertible 1 x 1 convolution, self-normalized)."""
    return SelfNormConv(shape, key=key, kernel_size=1, **options)


selfnorm_conv1x1.example_shape = (3, 2, 2)


class Conv(Bijection):
    """Exact twin of `SelfNormConv`: k x k convolution trained with the exact
    log-det and gradient. `logdet_method`: "blocks" (exact block LU, scales with
    H) or "dense" (slogdet of the dense CHW x CHW matrix, the reference's)."""

    weight: Array
    bias: Array
    shape: tuple[int, int, int] = eqx.field(static=True)
    logdet_method: str = eqx.field(static=True)
    example_shape: ClassVar = (2, 4, 3)

    def __init__(self, shape, *, key, kernel_size: int = 3, logdet_method: Literal["blocks", "dense"] = "blocks"):
        _check_image("Conv", shape, kernel_size)
        if logdet_method not in ("blocks", "dense"):
            raise ValueError(f"Conv: logdet_method must be 'blocks' or 'dense', got {logdet_method!r}")
        self.shape = tuple(int(s) for s in shape)
        self.weight, self.bias = _conv_init(shape, kernel_size, key)
        self.logdet_method = logdet_method

    def logdet(self):
        if self.logdet_method == "dense" and self.weight.shape[-1] > 1:
            return conv_logdet_dense(self.weight, self.shape)
        return conv_logdet_blocks(self.weight, self.shape)

    def forward(self, x):
        return conv2d_same(self.weight, x) + self.bias[:, None, None], self.logdet()

    def inverse(self, y):
        return conv_solve_blocks(self.weight, y - self.bias[:, None, None]), -self.logdet()
