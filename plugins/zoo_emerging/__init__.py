"""zoo_emerging: invertible convolutions by Hoogeboom et al.

Layers (entry points in `zoo.layers`): `emerging` -- the emerging convolution
(1x1 convolution + two square autoregressive convolutions facing opposite
ways, 2019) -- and `conv_exp` -- the convolution exponential exp(M)x with a
spectrally normalised convolution M (2020). Both act on one C x H x W image
and work anywhere a mixing layer goes (e.g. Glow's `mixing=`).
"""

from zoo_emerging.convexp import ConvExp, conv_exp, power_iteration
from zoo_emerging.emerging import Emerging, causal_mask

__all__ = ["Emerging", "ConvExp", "causal_mask", "conv_exp", "power_iteration"]
