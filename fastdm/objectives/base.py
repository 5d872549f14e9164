"""The objective interface and its registry."""
from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch

from ..errors import FastDMError

OBJECTIVES: dict[str, type["Objective"]] = {}


def register(cls: type["Objective"]) -> type["Objective"]:
    if cls.name in OBJECTIVES:
        raise ValueError(f"objective {cls.name!r} is registered twice")
    for s in cls.settings:
        if s.objective != cls.name:
            raise ValueError(f"setting {s.name} of objective {cls.name} must name it as its owner")
    OBJECTIVES[cls.name] = cls
    return cls


def get(name: str) -> type["Objective"]:
    if name not in OBJECTIVES:
        raise FastDMError(f"unknown objective '{name}'; choose from {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


class Counts(NamedTuple):
    """Rows per class of one side of a chunk, on the features' device and on the host (known
    there without a device sync)."""
    device: torch.Tensor  # int64 [k]
    host: torch.Tensor    # int64 [k] on the CPU


RealStats = tuple  # what an objective keeps of a chunk's real features (tensors)


class Objective:
    """A per-class distance between real and synthetic features.

    The engine runs, for each chunk of classes: ``reduce_real`` on the real features (under
    inference mode: no autograd), then ``loss`` on its result and the synthetic features (with
    autograd to the synthetic images). Both see class-contiguous rows with per-class counts.
    """

    name: ClassVar[str]
    title: ClassVar[str]                 # the loss plot's title
    ops: ClassVar[tuple[str, ...]]       # the fused ops it runs (their backends are in the plan)
    settings: ClassVar[tuple] = ()       # its own settings (fastdm.settings.Setting)
    defaults: ClassVar[dict] = {}        # what its settings' None resolves to
    # True when ``loss(..., value=False)`` leaves out terms that do not depend on the synthetic
    # set (same gradient, cheaper): the run then records no loss value between log points
    partial: ClassVar[bool] = False

    def __init__(self, config, backends: dict[str, str], device: torch.device):
        self.config, self.backends, self.device = config, backends, torch.device(device)

    @classmethod
    def resolve(cls, values: dict) -> dict:
        """Fill the defaults of this objective's own settings in ``values`` (the config's)."""
        for key, default in cls.defaults.items():
            if values.get(key) is None:
                values[key] = list(default) if isinstance(default, tuple) else default
        return values

    def begin(self, iteration: int) -> None:
        """Called before each iteration's chunks (for draws of the objective's own)."""

    def taps(self, net: torch.nn.Module) -> tuple[int, ...]:
        """Indices in ``net.features`` whose outputs the objective matches besides the
        embedding; with any, ``reduce_real`` and ``loss`` receive (embedding, *tap(outputs))."""
        return ()

    def tap(self, output: torch.Tensor) -> torch.Tensor:
        """What of a tapped output the objective keeps, computed inside the embedder (a
        compiled embedder fuses it with the layer that makes the output)."""
        return output

    def tap_sums(self):
        """None, or (p, finish) when ``tap(a)`` equals ``finish(sum over channels of |a|^p)`` for
        the tapped activations: forward-only native blocks then write those channel sums instead
        of handing over the activation (fastdm.models.fast_embed)."""
        return None

    def reduce_real(self, features: torch.Tensor, counts: Counts) -> RealStats:
        """What the real side is reduced to for ``loss`` (a tuple of tensors)."""
        raise NotImplementedError

    def loss(self, real: RealStats, real_counts: Counts, syn: torch.Tensor, syn_counts: Counts,
             value: bool = True) -> torch.Tensor:
        """Per-class loss [k] (float32), differentiable w.r.t. ``syn``. ``value=False`` may
        leave out terms constant in ``syn`` (only when ``partial``)."""
        raise NotImplementedError
