"""zoo_classic: the jax-flows family on vector data, and the 2-D toy datasets.

Models (entry points in `zoo.models`): `realnvp` (affine coupling + ActNorm +
permutations), `maf` (MADE masked autoregressive flow), `nsf` (rational-quadratic
spline coupling). Layer `made_affine` (`zoo.layers`). Datasets (`zoo.datasets`):
`moons`, `circles`, `8gaussians`, `checkerboard`, `pinwheel`.
"""
