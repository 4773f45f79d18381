"""The bijection contract and the combinators every family builds on.

A `Bijection` acts on ONE unbatched example (batch with `jax.vmap`).
`forward` is the normalizing direction (data -> base space) and returns
`(y, logdet)` with `logdet = log|det dy/dx|` a scalar; `inverse` returns
`(x, logdet)` with `logdet = log|det dx/dy|` (so it is minus the forward one).

Conditional layers (p(x | y)) declare a keyword-only `condition` on
`forward`/`inverse` (`def forward(self, x, *, condition=None)`); containers
hand it on with `call`, which passes it only to methods that declare it, so
unconditional layers (`forward(self, x)`) are called exactly as before. The
condition arrives encoded: a float array of the model's `condition_shape`
(see `zoo.flow.encode_condition`).
"""

import abc
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

__all__ = [
    "Bijection", "Chain", "Scan", "Invert", "Identity", "data_init", "after_update", "stack",
    "call", "takes_condition",
]


@functools.cache
def _declares_condition(cls: type, method: str) -> bool:
    try:
        params = inspect.signature(getattr(cls, method)).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    p = params.get("condition")
    return p is not None and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)


def takes_condition(layer, method: str = "forward") -> bool:
    """Whether `layer.<method>` declares a `condition` argument (by signature,
    at trace time; `**kwargs` does not count)."""
    return _declares_condition(type(layer), method)


def call(layer, method: str, x, condition=None):
    """`layer.<method>(x, condition=condition)` if the method declares
    `condition` and one is given, else `layer.<method>(x)` exactly as an
    unconditional layer expects. Every container calls its sub-layers this way."""
    fn = getattr(layer, method)
    if condition is not None and _declares_condition(type(layer), method):
        return fn(x, condition=condition)
    return fn(x)


def _vmap_call(layer, method: str, xs, conditions=None):
    """`call` over a batch: `xs` and `conditions` (if any) share the leading axis."""
    if conditions is None:
        return jax.vmap(getattr(layer, method))(xs)
    return jax.vmap(lambda x, c: call(layer, method, x, c))(xs, conditions)


class Bijection(eqx.Module):
    """Abstract invertible map with a tractable log-determinant."""

    @abc.abstractmethod
    def forward(self, x: Array) -> tuple[Array, Array]:
        """Data -> base direction. Returns `(y, log|det dy/dx|)`."""

    @abc.abstractmethod
    def inverse(self, y: Array) -> tuple[Array, Array]:
        """Base -> data direction. Returns `(x, log|det dx/dy|)`."""

    def data_init(self, xs: Array, *, condition: Array | None = None) -> tuple["Bijection", Array]:
        """Data-dependent initialisation on a batch `xs` (leading batch axis),
        with the batch of encoded conditions `condition` for conditional models.

        Returns the initialised bijection and its forward outputs on `xs`, so
        containers can initialise the next layer on what this one produces.
        Pure: run it under `jit` on the global (sharded) batch and the
        statistics are global. Layers without data-dependent state keep the
        default, which changes nothing. Containers call it with `call`, so an
        override that omits `condition` still works in unconditional models.
        """
        return self, _vmap_call(self, "forward", xs, condition)[0]

    def after_update(self) -> "Bijection":
        """Refresh state the optimizer does not train (e.g. power-iteration
        vectors) after each optimizer update; the trainer calls it through
        `after_update(model)`. A layer that overrides it refreshes its own
        sublayers too; the default changes nothing."""
        return self


def data_init(model: Any, batch: Array, *, condition: Array | None = None) -> Any:
    """Return `model` with every data-dependent layer (e.g. ActNorm) initialised
    from `batch` (leading batch axis); a conditional model also needs the
    batch's conditions (`condition`, same leading axis, as `log_prob` takes
    them, e.g. integer labels). Models without such layers come back
    unchanged. Pure: jit it with `eqx.filter_jit(zoo.data_init)` (plain
    `jax.jit` rejects the non-array leaves of a module)."""
    if hasattr(model, "data_init"):
        return call(model, "data_init", batch, condition)[0]
    return model


def _refreshes(m) -> bool:
    return isinstance(m, Bijection) and type(m).after_update is not Bijection.after_update


def after_update(model: Any) -> Any:
    """Return `model` (any pytree) with every layer that overrides
    `Bijection.after_update` replaced by its result; the trainer runs it after
    each optimizer update. Pure: jit it with `eqx.filter_jit`."""

    def refresh(m):
        if _refreshes(m):
            return m.after_update()
        if isinstance(m, Scan):  # its layers carry a leading stacked axis: one slice at a time
            return eqx.tree_at(lambda s: s.stacked, m, eqx.filter_vmap(after_update)(m.stacked))
        return m

    def is_leaf(m):  # Scans with nothing to refresh inside are walked through, not vmapped
        return _refreshes(m) or (isinstance(m, Scan) and any(map(_refreshes, jax.tree.leaves(m, is_leaf=_refreshes))))

    return jax.tree.map(refresh, model, is_leaf=is_leaf)


class Identity(Bijection):
    def forward(self, x):
        return x, jnp.zeros((), x.dtype)

    def inverse(self, y):
        return y, jnp.zeros((), y.dtype)


class Invert(Bijection):
    """Swap the two directions of a bijection."""

    bijection: Bijection

    def forward(self, x, *, condition=None):
        return call(self.bijection, "inverse", x, condition)

    def inverse(self, y, *, condition=None):
        return call(self.bijection, "forward", y, condition)

    def data_init(self, xs, *, condition=None):
        # An inverted layer has no forward-direction statistics to fit.
        return self, _vmap_call(self, "forward", xs, condition)[0]


def _signature(layer) -> tuple:
    """What must match for two layers to share one scanned body: the static
    structure, and the shape/dtype of every array."""
    arrays, static = eqx.partition(layer, eqx.is_array)
    leaves, treedef = jax.tree.flatten(arrays)
    static_leaves, static_def = jax.tree.flatten(static)
    try:
        hash(tuple(static_leaves))
        static_key = tuple(static_leaves)
    except TypeError:  # unhashable static leaf: compare by identity
        static_key = tuple(id(s) for s in static_leaves)
    return (treedef, static_def, static_key, tuple((a.shape, a.dtype) for a in leaves))


def stack(layers: Sequence[Bijection]) -> "Scan":
    """Stack structurally identical layers into one `Scan`."""
    layers = list(layers)
    sig = _signature(layers[0])
    for i, layer in enumerate(layers[1:], 1):
        if _signature(layer) != sig:
            raise ValueError(
                f"stack: layer {i} ({type(layer).__name__}) differs in structure or "
                f"array shapes from layer 0 ({type(layers[0]).__name__})"
            )
    arrays = [eqx.filter(layer, eqx.is_array) for layer in layers]
    static = eqx.filter(layers[0], eqx.is_array, inverse=True)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *arrays)
    return Scan(eqx.combine(stacked, static), len(layers))


class Scan(Bijection):
    """`length` identical layers whose arrays are stacked on a leading axis,
    run with `jax.lax.scan` so compile time does not grow with depth.

    Build one with `stack(layers)`, or with `eqx.filter_vmap` over keys:
    `Scan(eqx.filter_vmap(make)(jax.random.split(key, n)), n)`.
    """

    stacked: Bijection
    length: int = eqx.field(static=True)

    def _split(self):
        return eqx.partition(self.stacked, eqx.is_array)

    def _run(self, x, direction: str, reverse: bool, condition):
        params, static = self._split()

        def body(carry, p):
            h, total = carry
            h, ld = call(eqx.combine(p, static), direction, h, condition)  # condition: shared, not scanned
            return (h, total + ld), None

        (y, logdet), _ = jax.lax.scan(
            body, (x, jnp.zeros((), x.dtype)), params, reverse=reverse
        )
        return y, logdet

    def forward(self, x, *, condition=None):
        return self._run(x, "forward", reverse=False, condition=condition)

    def inverse(self, y, *, condition=None):
        return self._run(y, "inverse", reverse=True, condition=condition)

    def layer(self, i: int) -> Bijection:
        """The `i`-th layer as a plain module."""
        params, static = self._split()
        return eqx.combine(jax.tree.map(lambda a: a[i], params), static)

    def data_init(self, xs, *, condition=None):
        params, static = self._split()

        def body(h, p):
            new_layer, h = call(eqx.combine(p, static), "data_init", h, condition)
            return h, eqx.filter(new_layer, eqx.is_array)

        ys, new_params = jax.lax.scan(body, xs, params)
        return Scan(eqx.combine(new_params, static), self.length), ys


def _group(layers: list[Bijection], max_period: int = 8) -> list[Bijection]:
    """Replace runs of a repeated block of layers (A B A B ...) by a `Scan`
    over the block, greedily taking the block that covers the most layers."""
    sigs = [_signature(layer) for layer in layers]
    out, i, n = [], 0, len(layers)
    while i < n:
        best_p, best_r = 1, 1
        for p in range(1, min(max_period, (n - i) // 2) + 1):
            r = 1
            while i + (r + 1) * p <= n and sigs[i + r * p : i + (r + 1) * p] == sigs[i : i + p]:
                r += 1
            if r >= 2 and r * p > best_r * best_p:
                best_p, best_r = p, r
        if best_r >= 2:
            blocks = [layers[i + k * best_p : i + (k + 1) * best_p] for k in range(best_r)]
            blocks = [b[0] if best_p == 1 else Chain(b, scan=False) for b in blocks]
            out.append(stack(blocks))
            i += best_p * best_r
        else:
            out.append(layers[i])
            i += 1
    return out


class Chain(Bijection):
    """Apply `bijections` in order (forward) and in reverse order (inverse).

    Runs of structurally identical layers, or of an identical repeated block
    of layers, are stacked and scanned automatically (`scan=True`), so a
    32-layer chain compiles about as fast as a 4-layer one.
    """

    layers: tuple[Bijection, ...]

    def __init__(self, bijections: Sequence[Bijection], *, scan: bool = True):
        bijections = list(bijections)
        for i, b in enumerate(bijections):
            if not isinstance(b, Bijection):
                raise TypeError(f"Chain: element {i} is a {type(b).__name__}, not a Bijection")
        self.layers = tuple(_group(bijections) if scan and len(bijections) > 1 else bijections)

    def forward(self, x, *, condition=None):
        total = jnp.zeros((), x.dtype)
        for layer in self.layers:
            x, ld = call(layer, "forward", x, condition)
            total = total + ld
        return x, total

    def inverse(self, y, *, condition=None):
        total = jnp.zeros((), y.dtype)
        for layer in reversed(self.layers):
            y, ld = call(layer, "inverse", y, condition)
            total = total + ld
        return y, total

    def data_init(self, xs, *, condition=None):
        new = []
        for layer in self.layers:
            layer, xs = call(layer, "data_init", xs, condition)
            new.append(layer)
        return eqx.tree_at(lambda c: c.layers, self, tuple(new)), xs
