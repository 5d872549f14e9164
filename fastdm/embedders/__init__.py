"""Where each iteration's embedder comes from (``--embedders``).

* ``random``: fresh weights every iteration (DM, M3D, DataDAM, part 1's NCFM).
* ``queue``: IDM's queue of networks trained online on real batches (fastdm.embedders.queue).
* ``bank:PATH``: a member of a pretrained bank, interpolated between its initial and trained
  weights, and its trained network for the calibration step (DANCE, NCFM;
  fastdm.embedders.bank; banks come from ``fastdm pretrain``).

Every source writes its weights in place into the engine's one embedder module, so one compiled
graph serves the run whatever the source.
"""
from __future__ import annotations

from ..errors import FastDMError
from .base import EmbedderSource

__all__ = ["EmbedderSource", "parse_source", "build_source", "source_shardable"]

KINDS = ("random", "queue", "bank")


def parse_source(text: str) -> tuple[str, str | None]:
    """``random`` | ``queue`` | ``bank:PATH`` as (kind, path or None); a one-line error otherwise."""
    kind, _, path = text.partition(":")
    if kind not in KINDS or (kind != "bank" and path):
        raise FastDMError(f"--embedders must be random, queue or bank:PATH, got '{text}'")
    return kind, (path or None)


def source_shardable(text: str) -> bool:
    """Whether processes can split the classes (the queue trains on every class's images)."""
    return parse_source(text)[0] != "queue"


def build_source(cfg, net, data, device, real_images=None) -> EmbedderSource:
    """The run's source, writing into ``net`` (``real_images``: the uint8 training rows, which
    the queue trains on)."""
    kind, path = parse_source(cfg.embedders)
    if kind == "random":
        from .random_nets import RandomSource
        return RandomSource(cfg, net, data, device)
    if kind == "bank":
        from .bank import BankSource
        return BankSource(cfg, net, data, device, path)
    from .queue import QueueSource
    return QueueSource(cfg, net, data, device, real_images)
