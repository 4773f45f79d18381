"""zoo_selfnorm: Self-Normalizing Flows (Keller et al. 2021, arXiv 2011.07248).

Layers (`zoo.layers`): `selfnorm_dense`, `selfnorm_conv` (k x k), `selfnorm_conv1x1`
with learned approximate inverses trained by the self-normalized gradient, their
exact twins `dense` and `conv`, and the activations `slr`, `llr`, `spline`, `selu`.
Models (`zoo.models`): `selfnorm_fc` / `exact_fc`, `selfnorm_cnn` / `exact_cnn`
(on the shared `CNNFlowConfig` skeleton), `selfnorm_glow` (the Glow plugin's
architecture with self-normalizing 1 x 1 convolutions). Training objective and
GECO: `zoo_selfnorm.model.SelfNormModel`.
"""
