"""MADE (Germain et al. 2015) and the masked autoregressive affine layer of MAF
(Papamakarios et al. 2017).

The masks are boolean arrays: they are saved with the model and stacked by
`Chain`/`stack` like any other array, but optimisers that filter with
`eqx.is_inexact_array` never see them, so they are never trained.

Conditional MAF (p(x | y)) gives MADE a context input, the standard way
(Papamakarios et al. 2017, section 3.4): the condition feeds every unit of
the first hidden layer, unmasked (degree 0), and every output depends on it
(see `made_degrees`).
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from zoo.bijections.base import Bijection
from zoo.nn import relu

__all__ = ["MaskedLinear", "MADE", "MaskedAffine"]

# alpha = c * tanh(raw / c): scales stay within exp(+-c) per layer, so a badly
# conditioned step cannot blow the likelihood up, yet near 0 it is the identity.
MAX_LOG_SCALE = 3.0


class MaskedLinear(eqx.Module):
    """y = (W * mask) x + b with a fixed boolean connectivity mask."""

    weight: Array
    bias: Array
    mask: Array  # bool (out, in)

    def __init__(self, mask, *, key, zero=False):
        mask = jnp.asarray(mask, dtype=bool)
        out_size, in_size = mask.shape
        # eqx.nn.Linear's init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        lin = eqx.nn.Linear(in_size, out_size, key=key)
        self.weight = jnp.zeros_like(lin.weight) if zero else lin.weight
        self.bias = jnp.zeros_like(lin.bias) if zero else lin.bias
        self.mask = mask

    def __call__(self, x):
        return jnp.where(self.mask, self.weight, 0.0) @ x + self.bias


def made_degrees(num_inputs: int, width: int, depth: int, num_params: int, context_size: int = 0):
    """Degrees of MADE's inputs, hidden layers and outputs.

    Inputs have degrees 1..D; hidden units cycle through 1..D-1 (so every
    degree is present at any width); output block p, entry i has degree i+1.
    A hidden unit connects to inputs of degree <= its own, an output only to
    hidden units of strictly smaller degree, so output i depends on x_<i only.
    `context_size` context inputs follow x with degree 0, so they feed every
    hidden unit. With a context the hidden units cycle through 0..D-1
    instead: the degree-0 ones see the context alone and reach every output,
    so output 1 (x_1's parameters) depends on the context too (without them
    it is a constant, the bug of nflows' conditional MADE, nflows PR #85).
    """
    d = num_inputs
    inputs = np.concatenate([np.arange(1, d + 1), np.zeros(context_size, int)])
    if context_size:
        hidden = [np.arange(width) % d for _ in range(depth)]
    else:
        hidden = [np.arange(width) % max(d - 1, 1) + 1 for _ in range(depth)]
    outputs = np.tile(np.arange(1, d + 1), num_params)
    return inputs, hidden, outputs


class MADE(eqx.Module):
    """Masked MLP: R^D -> R^(num_params * D) whose output `[p, i]` depends only
    on `x[:i]` (and on the whole `context`, if `context_size > 0`). The last
    layer starts at zero."""

    layers: tuple[MaskedLinear, ...]
    num_params: int = eqx.field(static=True)
    context_size: int = eqx.field(static=True, default=0, kw_only=True)

    def __init__(self, num_inputs, num_params, *, key, width=64, depth=2, context_size=0):
        if depth < 0 or width < 1 or context_size < 0:
            raise ValueError(
                f"MADE: need width >= 1, depth >= 0, context_size >= 0; "
                f"got width={width}, depth={depth}, context_size={context_size}"
            )
        self.context_size = int(context_size)
        inputs, hidden, outputs = made_degrees(num_inputs, width, depth, num_params, self.context_size)
        degrees = [inputs, *hidden]
        masks = [h[:, None] >= prev[None, :] for prev, h in zip(degrees[:-1], degrees[1:])]
        masks.append(outputs[:, None] > degrees[-1][None, :])
        keys = jax.random.split(key, len(masks))
        self.layers = tuple(
            MaskedLinear(m, key=k, zero=(i == len(masks) - 1)) for i, (m, k) in enumerate(zip(masks, keys))
        )
        self.num_params = num_params

    def __call__(self, x, context=None):
        if self.context_size:
            if context is None or context.shape != (self.context_size,):
                got = None if context is None else context.shape
                raise ValueError(f"MADE: needs a context of shape ({self.context_size},), got {got}")
            h = jnp.concatenate([x, context.astype(x.dtype)])
        else:
            h = x
        for layer in self.layers[:-1]:
            h = relu(layer(h))
        return self.layers[-1](h).reshape(self.num_params, x.shape[0])


class MaskedAffine(Bijection):
    """MAF's layer: z = (x - mu(x)) * exp(-alpha(x)) with (mu, alpha) from a MADE,
    so `forward` (data -> base, the density direction) is one pass and
    log-det = -sum(alpha). `inverse` (sampling) is sequential: D MADE passes in
    a `lax.fori_loop`, each fixing one more coordinate; it is exact.
    Starts as the identity (zero-initialised last layer).

    With `condition_size > 0` it models p(x | y): `condition` (a float vector
    of that size) is MADE's context, in both directions."""

    made: MADE
    example_shape: ClassVar = (4,)

    def __init__(self, shape, *, key, width=64, depth=2, condition_size=0):
        shape = tuple(shape)
        if len(shape) != 1:
            raise ValueError(f"MaskedAffine acts on vectors (D,), got event shape {shape}")
        self.made = MADE(shape[0], 2, key=key, width=width, depth=depth, context_size=condition_size)

    def _shift_log_scale(self, x, condition):
        if self.made.context_size and condition is None:
            raise ValueError(f"MaskedAffine was built with condition_size={self.made.context_size}; pass condition=")
        mu, raw = self.made(x, condition if self.made.context_size else None)
        return mu, MAX_LOG_SCALE * jnp.tanh(raw / MAX_LOG_SCALE)

    def forward(self, x, *, condition=None):
        mu, alpha = self._shift_log_scale(x, condition)
        return (x - mu) * jnp.exp(-alpha), -jnp.sum(alpha)

    def inverse(self, z, *, condition=None):
        def step(_, x):
            # after pass i, x[:i+1] are final: x_i only needs x_<i
            mu, alpha = self._shift_log_scale(x, condition)
            return z * jnp.exp(alpha) + mu

        x = jax.lax.fori_loop(0, z.shape[0], step, jnp.zeros_like(z))
        _, alpha = self._shift_log_scale(x, condition)
        return x, jnp.sum(alpha)
