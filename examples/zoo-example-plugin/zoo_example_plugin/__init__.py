"""Example zoo plugin: a learnable leaky-ReLU layer and a small flow using it.

zoo discovers both through the entry points in this distribution's
pyproject.toml; importing this package is never required to use them.
"""

from zoo_example_plugin.layers import LeakyReLU
from zoo_example_plugin.models import ExampleFlowConfig

__all__ = ["LeakyReLU", "ExampleFlowConfig"]
