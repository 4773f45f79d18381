"""Glow: squeeze -> K x (ActNorm, channel mixing, coupling) -> split, repeated over levels.

The factored-out half at each split has a learned conditional prior
N(loc(h1), exp(log_scale(h1))^2) and the top latent a learned per-channel
prior. `MultiScaleGlow.forward` standardises every latent with its prior
(eps = (h2 - loc) / scale, log-det -sum(log_scale)), so the whole model is an
exact bijection onto a standard normal over all D latents: `zoo.Flow` then
gives log_prob, bits/dim, and temperature sampling that scales the noise of
every prior (Glow's T), and reconstruction from the latents is exact.

Class-conditional Glow (`condition_shape=(K,)`, OpenAI Glow's `--ycond`):
the one-hot class shifts the top prior's per-channel loc and log-scale
through a zero-initialised linear map, and is fed to every coupling's
conditioner as K constant extra channels. The map's weights live in the
`top_loc`/`top_log_scale` arrays themselves (extra columns), so the pytree
of an unconditional Glow, and with it every saved checkpoint, is unchanged.
"""

import dataclasses
import math
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

import zoo
from zoo.bijections import ActNorm, AdditiveCoupling, AffineCoupling, Bijection, Chain, Squeeze
from zoo.bijections.base import call
from zoo.distributions import StandardNormal
from zoo.flow import Flow, condition_size
from zoo.nn import Conv2d
from zoo_glow.nn import GlowConditioner

__all__ = ["GlowConfig", "MultiScaleGlow", "SplitPrior"]

_SQUEEZE = Squeeze()


class SplitPrior(eqx.Module):
    """Prior of the factored-out half h2 given the kept half h1: a Gaussian whose
    loc and log-scale come from a zero-initialised 3x3 conv of h1 (Glow's
    split2d prior), or N(0, I) when `conv` is None."""

    conv: Conv2d | None

    def __init__(self, keep_channels: int, out_channels: int, *, key, learned: bool = True):
        self.conv = Conv2d(keep_channels, 2 * out_channels, 3, key=key, zero_init=True) if learned else None

    def _params(self, h1, h2_shape):
        if self.conv is None:
            zero = jnp.zeros(h2_shape, h1.dtype)
            return zero, zero
        p = self.conv(h1)
        c = p.shape[0] // 2
        return p[:c], p[c:]

    def standardize(self, h1, h2):
        """eps = (h2 - loc) / scale and log|d eps / d h2| = -sum(log_scale)."""
        loc, log_scale = self._params(h1, h2.shape)
        return (h2 - loc) * jnp.exp(-log_scale), -jnp.sum(log_scale)

    def unstandardize(self, h1, eps):
        loc, log_scale = self._params(h1, eps.shape)
        return loc + jnp.exp(log_scale) * eps, jnp.sum(log_scale)


class MultiScaleGlow(Bijection):
    """Glow's multi-scale transform of one C x H x W image onto a flat (D,)
    vector of standardised latents (split latents level by level, then the top).

    `levels[i]` is the `Chain` of K steps at level i (scanned: its K steps are
    identical modules), `priors[i]` the prior of the half split off after it,
    `top_loc`/`top_log_scale` the learned per-channel top prior (None: N(0, I)).
    With `condition_size` K > 0 they are (C_top, 1 + K), or (C_top, K) without
    `learn_top`: column 0 the class-independent prior, the other K columns a
    zero-initialised linear map of the condition added to it (for a one-hot
    class k: loc = top_loc[:, 0] + top_loc[:, 1 + k]); `condition` is also
    handed to every level's layers.
    Inputs in [0, 1) are shifted by -`shift` first (a translation: log-det 0).
    """

    levels: tuple[Bijection, ...]
    priors: tuple[SplitPrior, ...]
    top_loc: Array | None
    top_log_scale: Array | None
    shape: tuple[int, int, int] = eqx.field(static=True)
    shift: float = eqx.field(static=True)
    condition_size: int = eqx.field(static=True, default=0)

    def __init__(
        self, shape, levels, priors, *, learn_top: bool = True, shift: float = 0.5, condition_size: int = 0
    ):
        self.shape = tuple(int(s) for s in shape)
        self.levels = tuple(levels)
        self.priors = tuple(priors)
        if len(self.priors) != len(self.levels) - 1:
            raise ValueError(f"MultiScaleGlow: {len(self.levels)} levels need {len(self.levels) - 1} split priors")
        c_top = self.level_shapes()[-1][0]
        self.condition_size = int(condition_size)
        if self.condition_size:
            top = (c_top, int(learn_top) + self.condition_size)
        else:
            top = (c_top,) if learn_top else None
        self.top_loc = None if top is None else jnp.zeros(top)
        self.top_log_scale = None if top is None else jnp.zeros(top)
        self.shift = float(shift)

    def level_shapes(self) -> list[tuple[int, int, int]]:
        """Shape of the activations inside each level (after its squeeze)."""
        c, h, w = self.shape
        out = []
        for i in range(len(self.levels)):
            c, h, w = 4 * c, h // 2, w // 2
            out.append((c, h, w))
            c = c // 2  # the kept half goes on
        return out

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Shapes of the latents in the order they appear in the flat output."""
        shapes = self.level_shapes()
        split = [(c - c // 2, h, w) for c, h, w in shapes[:-1]]
        return split + [shapes[-1]]

    def _check_condition(self, condition, *, batched=False):
        k = self.condition_size
        if not k:
            return
        if condition is None:
            raise ValueError(f"MultiScaleGlow was built with condition_size={k}; pass condition=")
        got = condition.shape[int(batched):]
        if got != (k,):
            raise ValueError(f"MultiScaleGlow: condition must have shape ({k},), got {got}")

    # top prior -------------------------------------------------------------
    def _top(self, h, inverse, condition=None):
        if self.top_loc is None:
            return h, jnp.zeros((), h.dtype)
        top_loc, top_log_scale = self.top_loc, self.top_log_scale
        if self.condition_size:  # the class's own prior: the columns applied to (1, condition)
            u = condition.astype(top_loc.dtype)
            if top_loc.shape[1] > self.condition_size:
                u = jnp.concatenate([jnp.ones(1, u.dtype), u])
            top_loc, top_log_scale = top_loc @ u, top_log_scale @ u
        loc, log_scale = top_loc[:, None, None], top_log_scale[:, None, None]
        ld = jnp.sum(top_log_scale) * (h.size // h.shape[0])
        if inverse:
            return loc + jnp.exp(log_scale) * h, ld
        return (h - loc) * jnp.exp(-log_scale), -ld

    # bijection -------------------------------------------------------------
    def forward(self, x, *, condition=None):
        self._check_condition(condition)
        h = x - self.shift
        total = jnp.zeros((), x.dtype)
        latents = []
        for i, steps in enumerate(self.levels):
            h, _ = _SQUEEZE.forward(h)
            h, ld = call(steps, "forward", h, condition)
            total = total + ld
            if i < len(self.priors):
                c = h.shape[0] // 2
                eps, ld = self.priors[i].standardize(h[:c], h[c:])
                latents.append(eps.ravel())
                total = total + ld
                h = h[:c]
        eps, ld = self._top(h, inverse=False, condition=condition)
        latents.append(eps.ravel())
        return jnp.concatenate(latents), total + ld

    def inverse(self, z, *, condition=None):
        self._check_condition(condition)
        shapes = self.latent_shapes()
        sizes = [math.prod(s) for s in shapes]
        offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        piece = lambda i: z[offsets[i] : offsets[i + 1]].reshape(shapes[i])  # noqa: E731
        h, total = self._top(piece(len(shapes) - 1), inverse=True, condition=condition)
        for i in reversed(range(len(self.levels))):
            if i < len(self.priors):
                h2, ld = self.priors[i].unstandardize(h, piece(i))
                h = jnp.concatenate([h, h2], axis=0)
                total = total + ld
            h, ld = call(self.levels[i], "inverse", h, condition)
            total = total + ld
            h, _ = _SQUEEZE.inverse(h)
        return h + self.shift, total

    def data_init(self, xs, *, condition=None):
        # ActNorm statistics level by level on what the previous layers output;
        # `condition`: the batch of encoded conditions (leading axis)
        self._check_condition(condition, batched=True)
        hs = xs - self.shift
        new_levels, latents = [], []
        for i, steps in enumerate(self.levels):
            hs = jax.vmap(lambda h: _SQUEEZE.forward(h)[0])(hs)
            steps, hs = call(steps, "data_init", hs, condition)
            new_levels.append(steps)
            if i < len(self.priors):
                c = hs.shape[1] // 2
                eps = jax.vmap(self.priors[i].standardize)(hs[:, :c], hs[:, c:])[0]
                latents.append(eps.reshape(len(xs), -1))
                hs = hs[:, :c]
        if condition is None:
            top = jax.vmap(lambda h: self._top(h, inverse=False)[0])(hs)
        else:
            top = jax.vmap(lambda h, c: self._top(h, inverse=False, condition=c)[0])(hs, condition)
        latents.append(top.reshape(len(xs), -1))
        new = eqx.tree_at(lambda m: m.levels, self, tuple(new_levels))
        return new, jnp.concatenate(latents, axis=1)


@dataclasses.dataclass(frozen=True)
class GlowConfig:
    """Glow (Kingma & Dhariwal 2018): `levels` x [squeeze, `depth` steps of
    (ActNorm, channel mixing, coupling), split with a learned conditional
    prior], learned top prior. The mixing layer is any registered layer name
    (conv1x1, conv1x1_lu, selfnorm_conv1x1, emerging, conv_exp, ...). Inputs
    are images in [0, 1) (uniformly dequantized); likelihoods are in those units."""

    levels: int = 2
    """Number of levels (each starts with a 2x2 squeeze, so H and W must be divisible by 2**levels)."""
    depth: int = 8
    """Steps of flow per level (K); the steps of a level are stacked and scanned."""
    width: int = 64
    """Hidden channels of each coupling's conv conditioner (3x3 -> 1x1 -> zero-initialised 3x3)."""
    mixing: str = "conv1x1"
    """Channel-mixing layer of every step, by registered layer name (conv1x1, conv1x1_lu, ...)."""
    coupling: Literal["affine", "additive"] = "affine"
    """Affine coupling with scale sigmoid(h + 2), or additive (volume-preserving) coupling."""
    split_prior: bool = True
    """Learned conditional prior for each split-off half (False: standard normal)."""
    learn_top: bool = True
    """Learned per-channel mean and scale of the top prior (False: standard normal)."""
    condition_shape: tuple[int, ...] | None = None
    """Class-conditional Glow, p(x | y) for K classes when (K,): a top prior per class, the class in every coupling."""

    example_input_shape: ClassVar[tuple] = (2, 4, 4)
    input_kinds: ClassVar[tuple] = ("image",)
    default_data: ClassVar[str] = "mnist_bundled"
    example_overrides: ClassVar[dict] = {"levels": 2, "depth": 2, "width": 8}

    def mixing_options(self) -> dict:
        """Extra keyword options passed to the mixing layer's constructor
        (subclasses override this; the registry layer gets `shape` and `key`)."""
        return {}

    def make_step(self, shape, *, key) -> list[Bijection]:
        """One step of flow on activations of `shape`: ActNorm, mixing, coupling."""
        k_mix, k_coupling = jax.random.split(key)
        mixing = zoo.create_layer(self.mixing, key=k_mix, shape=shape, **self.mixing_options())
        c1 = shape[0] // 2
        cs = condition_size(self.condition_shape, model="glow")  # extra constant input channels
        if self.coupling == "affine":
            net = GlowConditioner(c1 + cs, 2 * (shape[0] - c1), width=self.width, key=k_coupling)
            coupling = AffineCoupling(
                shape, key=k_coupling, conditioner=net, split=c1, scale="sigmoid", condition_size=cs
            )
        elif self.coupling == "additive":
            net = GlowConditioner(c1 + cs, shape[0] - c1, width=self.width, key=k_coupling)
            coupling = AdditiveCoupling(shape, key=k_coupling, conditioner=net, split=c1, condition_size=cs)
        else:
            raise ValueError(f"glow: coupling must be 'affine' or 'additive', got {self.coupling!r}")
        return [ActNorm(shape), mixing, coupling]

    def _check(self, input_shape) -> tuple[int, int, int]:
        shape = tuple(int(s) for s in input_shape)
        bad = {k: v for k, v in dict(levels=self.levels, depth=self.depth, width=self.width).items() if v < 1}
        if bad:
            raise ValueError(f"glow: these settings must be >= 1: {bad}")
        if len(shape) != 3:
            raise ValueError(f"glow models C x H x W images; got input_shape {shape}")
        f = 2**self.levels
        if shape[1] % f or shape[2] % f:
            raise ValueError(
                f"glow: {self.levels} levels squeeze H and W by {f}, which must divide them; got {shape}. "
                f"Use fewer levels (e.g. 2 for 28 x 28)"
            )
        return shape

    def build_bijection(self, *, input_shape, key) -> MultiScaleGlow:
        shape = self._check(input_shape)
        c, h, w = shape
        levels, priors = [], []
        k_levels, k_priors = jax.random.split(key)
        for i, k in enumerate(jax.random.split(k_levels, self.levels)):
            c, h, w = 4 * c, h // 2, w // 2
            layers = [layer for kk in jax.random.split(k, self.depth) for layer in self.make_step((c, h, w), key=kk)]
            levels.append(Chain(layers))  # finds the repeated step and scans it
            if i < self.levels - 1:
                keep = c // 2
                priors.append(
                    SplitPrior(keep, c - keep, key=jax.random.fold_in(k_priors, i), learned=self.split_prior)
                )
                c = keep
        cs = condition_size(self.condition_shape, model="glow")
        return MultiScaleGlow(shape, levels, priors, learn_top=self.learn_top, condition_size=cs)

    def build(self, *, input_shape, key) -> Flow:
        bijection = self.build_bijection(input_shape=input_shape, key=key)
        return Flow(bijection, StandardNormal((math.prod(bijection.shape),)), condition_shape=self.condition_shape)
