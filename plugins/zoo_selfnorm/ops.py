"""Linear operators of the self-normalizing layers: "same" convolutions, their
dense matrix form, and the exact log-determinant / inverse of a k x k
convolution operator by block-tridiagonal LU.

Block method (exact, scales linearly in the number of rows). With zero
padding, a k x k convolution (r = k // 2) of a C x H x W image couples image
row t only with rows t - r .. t + r. Grouping r consecutive rows into one
block of n = r*C*W unknowns makes the D x D operator block-tridiagonal with
the same three n x n blocks (L, D, U) in every block row (translation
invariance), so

    log|det M| = sum_i log|det S_i|,   S_0 = D,  S_i = D - L S_{i-1}^{-1} U,

one n x n LU per block row: O(H/r * n^3) = O(H r^2 C^3 W^3) work instead of
O((C H W)^3), and the image is transposed first so that W is the shorter
side. No pivoting across blocks (partial pivoting inside each S_i), which is
exact in exact arithmetic whenever every S_i is invertible; the tests compare
it with slogdet of the dense matrix. If H is not a multiple of r the last
block is padded with identity rows that the real rows do not see (the
determinant is unchanged).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from zoo.nn import current_conv_impl, lax_conv_same

__all__ = [
    "conv2d_same", "flip_kernel", "tap_counts", "conv_matrix", "conv_logdet_dense",
    "conv_logdet_blocks", "conv_solve_blocks", "dense_apply",
]


def dense_apply(w: Array, x: Array) -> Array:
    return w @ x


def conv2d_same(k: Array, x: Array) -> Array:
    """Stride-1 zero-padded "same" cross-correlation of one C x H x W image with
    kernel k (O, C, kh, kw), as kh*kw shifted matrix products (fast inside
    `lax.scan` on XLA:CPU, see `zoo.nn`); `lax.conv` on accelerators (`zoo.nn.current_conv_impl`)."""
    kh, kw = k.shape[2:]
    if current_conv_impl() == "lax":
        return lax_conv_same(x, k)
    if kh == 1 and kw == 1:
        return jnp.einsum("oc,chw->ohw", k[:, :, 0, 0], x)
    rh, rw = kh // 2, kw // 2
    _, h, w = x.shape
    xp = jnp.pad(x, ((0, 0), (rh, rh), (rw, rw)))
    out = None
    for a in range(kh):
        for b in range(kw):
            term = jnp.einsum("oc,chw->ohw", k[:, :, a, b], xp[:, a : a + h, b : b + w])
            out = term if out is None else out + term
    return out


def flip_kernel(k: Array) -> Array:
    """The kernel of the transposed convolution: swap in/out channels, flip space.
    For a 1 x 1 kernel this is the matrix transpose."""
    return jnp.flip(k, (2, 3)).transpose(1, 0, 2, 3)


def tap_counts(kernel_size: int, h: int, w: int) -> np.ndarray:
    """(k, k) array: for each kernel tap, the number of output positions whose
    input under that tap lies inside the image (H*W for a 1 x 1 kernel)."""
    r = kernel_size // 2
    off = np.abs(np.arange(kernel_size) - r)
    return np.outer(h - off, w - off).astype(np.float64)


def conv_matrix(k: Array, shape) -> Array:
    """Dense (O*H*W, C*H*W) matrix of the convolution on C x H x W images."""
    c, h, w = shape
    eye = jnp.eye(c * h * w, dtype=k.dtype).reshape(c * h * w, c, h, w)
    cols = jax.vmap(lambda e: conv2d_same(k, e).reshape(-1))(eye)
    return cols.T


def conv_logdet_dense(k: Array, shape) -> Array:
    """log|det| of the convolution operator from its dense matrix: O((CHW)^3)."""
    return jnp.linalg.slogdet(conv_matrix(k, shape))[1]


def _oriented(k, shape):
    c, h, w = shape
    if w > h:  # transpose both image axes: a similarity, det unchanged
        return k.transpose(0, 1, 3, 2), (c, w, h), True
    return k, (c, h, w), False


def _blocks(k, shape):
    """(L, D, U) n x n blocks, number of blocks nb, and the validity mask of
    the last block (False on padding rows). Layout inside a block: (row, c, w)."""
    c, h, w = shape
    kk = k.shape[2]
    r = kk // 2
    # A[a]: the (C*W, C*W) operator from input row t + a - r to output row t.
    shifts = jnp.stack([jnp.eye(w, k=b - r, dtype=k.dtype) for b in range(kk)])
    a_rows = jnp.einsum("ocab,bwv->aowcv", k, shifts).reshape(kk, c * w, c * w)
    zero = jnp.zeros((c * w, c * w), k.dtype)

    def block(d):
        rows = []
        for rho in range(r):
            rows.append([a_rows[a] if 0 <= (a := d * r + rho2 - rho + r) < kk else zero for rho2 in range(r)])
        return jnp.block(rows)

    nb = -(-h // r)
    valid = np.repeat(np.arange((nb - 1) * r, nb * r) < h, c * w)
    return block(-1), block(0), block(1), nb, valid


def _last_blocks(lo, di, up, valid):
    v = jnp.asarray(valid, di.dtype)
    d_last = di * v[:, None] * v[None, :] + jnp.diag(1 - v)
    return lo * v[:, None], d_last, up * v[None, :]


def _schur_lus(k, shape):
    """LU factors (stacked) of the Schur complements S_0 .. S_{nb-1}."""
    lo, di, up, nb, valid = _blocks(k, shape)
    lo_l, di_l, up_l = _last_blocks(lo, di, up, valid)
    lu_solve = jax.scipy.linalg.lu_solve
    lu_factor = jax.scipy.linalg.lu_factor
    if nb == 1:
        lu, piv = lu_factor(di_l)
        return lu[None], piv[None], (lo_l, up_l, lo_l, up_l), nb, valid
    first = lu_factor(di)

    def step(prev, _):
        s = di - lo @ lu_solve(prev, up)
        f = lu_factor(s)
        return f, f

    # interior rows 1 .. nb-2 share (L, D, U); the last row is masked; the
    # super-diagonal block above the last row is masked on its columns.
    prev, mids = jax.lax.scan(step, first, None, length=nb - 2)
    last = lu_factor(di_l - lo_l @ lu_solve(prev, up_l))
    lus = jnp.concatenate([first[0][None], mids[0], last[0][None]])
    pivs = jnp.concatenate([first[1][None], mids[1], last[1][None]])
    return lus, pivs, (lo, up, lo_l, up_l), nb, valid


def conv_logdet_blocks(k: Array, shape) -> Array:
    """Exact log|det| of the k x k convolution operator by block LU (see module doc)."""
    c, h, w = shape
    kk = k.shape[2]
    if kk == 1:
        return h * w * jnp.linalg.slogdet(k[:, :, 0, 0])[1]
    k, shape, _ = _oriented(k, shape)
    lus = _schur_lus(k, shape)[0]
    return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(lus, axis1=-2, axis2=-1))))


def conv_solve_blocks(k: Array, y: Array) -> Array:
    """Exact inverse of the convolution: x with conv2d_same(k, x) = y (block LU solve)."""
    kk = k.shape[2]
    if kk == 1:
        c, h, w = y.shape
        return jnp.linalg.solve(k[:, :, 0, 0], y.reshape(c, -1)).reshape(y.shape)
    k, shape, transposed = _oriented(k, y.shape)
    if transposed:
        y = y.transpose(0, 2, 1)
    c, h, w = shape
    r = kk // 2
    lus, pivs, (lo, up, lo_l, up_l), nb, valid = _schur_lus(k, shape)
    lu_solve = jax.scipy.linalg.lu_solve
    yp = jnp.pad(y, ((0, 0), (0, nb * r - h), (0, 0)))
    yb = yp.reshape(c, nb, r, w).transpose(1, 2, 0, 3).reshape(nb, -1)
    # forward sweep: g_i = y_i - L_i S_{i-1}^{-1} g_{i-1}
    g0 = yb[0]
    los = jnp.stack([lo] * max(nb - 2, 0) + ([lo_l] if nb > 1 else []))  # L_1 .. L_{nb-1}

    def fwd(g_prev, inp):
        lu, piv, l_i, y_i = inp
        g = y_i - l_i @ lu_solve((lu, piv), g_prev)
        return g, g

    if nb > 1:
        _, gs = jax.lax.scan(fwd, g0, (lus[:-1], pivs[:-1], los, yb[1:]))
        gs = jnp.concatenate([g0[None], gs])
    else:
        gs = g0[None]
    # back substitution: x_i = S_i^{-1} (g_i - U_i x_{i+1})
    x_last = lu_solve((lus[-1], pivs[-1]), gs[-1])
    ups = jnp.stack([up] * max(nb - 2, 0) + ([up_l] if nb > 1 else []))  # U_0 .. U_{nb-2}

    def bwd(x_next, inp):
        lu, piv, u_i, g_i = inp
        x = lu_solve((lu, piv), g_i - u_i @ x_next)
        return x, x

    if nb > 1:
        _, xs = jax.lax.scan(bwd, x_last, (lus[:-1], pivs[:-1], ups, gs[:-1]), reverse=True)
        xb = jnp.concatenate([xs, x_last[None]])
    else:
        xb = x_last[None]
    x = xb.reshape(nb, r, c, w).transpose(2, 0, 1, 3).reshape(c, nb * r, w)[:, :h]
    return x.transpose(0, 2, 1) if transposed else x


def xavier_normal_std(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    return gain * math.sqrt(2.0 / (fan_in + fan_out))
