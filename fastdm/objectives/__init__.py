"""Objectives: the distance between each class's real and synthetic features that DM-family
methods minimise. One file per objective, registered by name; the engine calls the interface
(``fastdm.objectives.base.Objective``) and never branches on which one runs.

Adding one: a file here with an ``Objective`` subclass decorated with ``@register``, its torch
reference and fused ops in ``fastdm.ops``, its own settings (if any) in ``settings``, an import
below, and its tests.
"""
from .base import OBJECTIVES, Objective, RealStats, get, register  # noqa: F401
from . import datadam, dm, m3d, ncfm  # noqa: F401,E402  (registration)
