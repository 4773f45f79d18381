"""MADE (Germain et al. 2015) and the masked autoregressive affine layer of MAF
(Papamakarios et al. 2017).

The masks are boolean arrays: they are saved with the model and stacked by
`Chain`/`stack` like any other array, but optimisers that filter with
`eqx.is_inexact_array` never see them, so they are never trained.
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from zoo.bijections.base import Bijection

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


def made_degrees(num_inputs: int, width: int, depth: int, num_params: int):
    """Degrees of MADE's inputs, hidden layers and outputs.

    Inputs have degrees 1..D; hidden units cycle through 1..D-1 (so every
    degree is present at any width); output block p, entry i has degree i+1.
    A hidden unit connects to inputs of degree <= its own, an output only to
    hidden units of strictly smaller degree, so output i depends on x_<i only.
    """
    d = num_inputs
    inputs = np.arange(1, d + 1)
    hidden = [np.arange(width) % max(d - 1, 1) + 1 for _ in range(depth)]
    outputs = np.tile(inputs, num_params)
    return inputs, hidden, outputs


class MADE(eqx.Module):
    """Masked MLP: R^D -> R^(num_params * D) whose output `[p, i]` depends only
    on `x[:i]`. The last layer starts at zero."""

    layers: tuple[MaskedLinear, ...]
    num_params: int = eqx.field(static=True)

    def __init__(self, num_inputs, num_params, *, key, width=64, depth=2):
        if depth < 0 or width < 1:
            raise ValueError(f"MADE: need width >= 1 and depth >= 0, got width={width}, depth={depth}")
        inputs, hidden, outputs = made_degrees(num_inputs, width, depth, num_params)
        degrees = [inputs, *hidden]
        masks = [h[:, None] >= prev[None, :] for prev, h in zip(degrees[:-1], degrees[1:])]
        masks.append(outputs[:, None] > degrees[-1][None, :])
        keys = jax.random.split(key, len(masks))
        self.layers = tuple(
            MaskedLinear(m, key=k, zero=(i == len(masks) - 1)) for i, (m, k) in enumerate(zip(masks, keys))
        )
        self.num_params = num_params

    def __call__(self, x):
        h = x
        for layer in self.layers[:-1]:
            h = jax.nn.relu(layer(h))
        return self.layers[-1](h).reshape(self.num_params, x.shape[0])


class MaskedAffine(Bijection):
    """MAF's layer: z = (x - mu(x)) * exp(-alpha(x)) with (mu, alpha) from a MADE,
    so `forward` (data -> base, the density direction) is one pass and
    log-det = -sum(alpha). `inverse` (sampling) is sequential: D MADE passes in
    a `lax.fori_loop`, each fixing one more coordinate; it is exact.
    Starts as the identity (zero-initialised last layer)."""

    made: MADE
    example_shape: ClassVar = (4,)

    def __init__(self, shape, *, key, width=64, depth=2):
        shape = tuple(shape)
        if len(shape) != 1:
            raise ValueError(f"MaskedAffine acts on vectors (D,), got event shape {shape}")
        self.made = MADE(shape[0], 2, key=key, width=width, depth=depth)

    def _shift_log_scale(self, x):
        mu, raw = self.made(x)
        return mu, MAX_LOG_SCALE * jnp.tanh(raw / MAX_LOG_SCALE)

    def forward(self, x):
        mu, alpha = self._shift_log_scale(x)
        return (x - mu) * jnp.exp(-alpha), -jnp.sum(alpha)

    def inverse(self, z):
        def step(_, x):
            # after pass i, x[:i+1] are final: x_i only needs x_<i
            mu, alpha = self._shift_log_scale(x)
            return z * jnp.exp(alpha) + mu

        x = jax.lax.fori_loop(0, z.shape[0], step, jnp.zeros_like(z))
        _, alpha = self._shift_log_scale(x)
        return x, jnp.sum(alpha)
