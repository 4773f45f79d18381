"""The bijection contract and the generic layers every family reuses."""

from zoo.bijections.actnorm import ActNorm
from zoo.bijections.base import (
    Bijection,
    Chain,
    Identity,
    Invert,
    Scan,
    after_update,
    call,
    data_init,
    stack,
    takes_condition,
)
from zoo.bijections.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ConvConditioner,
    MLPConditioner,
    SplineCoupling,
)
from zoo.bijections.elementwise import Affine, Logit, Sigmoid
from zoo.bijections.linear import LULinear
from zoo.bijections.permute import Permute, Reverse
from zoo.bijections.reshape import Squeeze
from zoo.bijections.spline import RationalQuadraticSpline, rq_spline

__all__ = [
    "Bijection", "Chain", "Scan", "Invert", "Identity", "data_init", "after_update", "stack",
    "call", "takes_condition",
    "Affine", "ActNorm", "LULinear", "Reverse", "Permute", "Squeeze", "Logit", "Sigmoid",
    "AffineCoupling", "AdditiveCoupling", "SplineCoupling", "MLPConditioner", "ConvConditioner",
    "RationalQuadraticSpline", "rq_spline",
]
