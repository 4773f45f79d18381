"""selfnorm_glow: the Glow plugin's architecture (reused through the layer
registry, not copied) with self-normalizing channel mixing, trained with the
self-normalized gradient (SNF paper, Tables 1-2 and A.5)."""

import dataclasses

from zoo_glow import GlowConfig
from zoo_selfnorm.options import SelfNormOptions

__all__ = ["SelfNormGlowConfig"]


@dataclasses.dataclass(frozen=True)
class SelfNormGlowConfig(SelfNormOptions, GlowConfig):
    """Glow whose invertible 1x1 convolutions are self-normalizing (a learned inverse R,
    no determinant or inverse in training); exact log-likelihood in evaluation."""

    mixing: str = "selfnorm_conv1x1"
    """Channel-mixing layer by registered name: selfnorm_conv1x1, or selfnorm_conv (k x k, see mixing_kernel_size)."""
    mixing_kernel_size: int = 3
    """Kernel size when mixing = selfnorm_conv (the GECO experiment uses 5)."""

    def mixing_options(self) -> dict:
        return {"kernel_size": self.mixing_kernel_size} if self.mixing == "selfnorm_conv" else {}

    def build(self, *, input_shape, key):
        return self.wrap(super().build(input_shape=input_shape, key=key))
