"""zoo_glow: Glow (Kingma & Dhariwal 2018) as one multi-scale architecture whose
channel-mixing layer is chosen by name from the layer registry.

Model (entry point in `zoo.models`): `glow` -> `GlowConfig`. Layers
(`zoo.layers`): `conv1x1` (dense invertible 1x1 convolution, slogdet log-det)
and `conv1x1_lu` (its LU parametrisation). `conv1x1_glow`, `selfnorm_glow`,
`emerging_glow` are configurations of `glow` with a different `mixing`.
"""

from zoo_glow.layers import Conv1x1, Conv1x1LU
from zoo_glow.model import GlowConfig, MultiScaleGlow, SplitPrior

__all__ = ["GlowConfig", "MultiScaleGlow", "SplitPrior", "Conv1x1", "Conv1x1LU"]
