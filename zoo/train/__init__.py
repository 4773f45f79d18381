"""The shared trainer: `python -m zoo.train --model NAME --data NAME`."""

from zoo.train.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def __getattr__(name):
    if name == "train":  # the loop imports optax/grain: load on use
        from zoo.train.loop import train

        return train
    raise AttributeError(f"module 'zoo.train' has no attribute {name!r}")
