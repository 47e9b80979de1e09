"""Backbones, registered by name in ``bench.registry.BACKBONES``; each returns its stage outputs."""
from bench.models import resnet_cifar, resnet_imagenet  # noqa: F401  (registers the backbones)
from bench.models.common import Backbone

__all__ = ["Backbone"]
