"""``--tensorboard DIR``: live scalars and image grids through torch.utils.tensorboard.

TensorBoard is an optional extra (``pip install fastdm[tensorboard]``); asking for it without
the package is a one-line error that says so."""
from __future__ import annotations

import torch

from .errors import FastDMError


class Board:
    """A SummaryWriter with the few calls fastdm makes; events are flushed as they come, so
    TensorBoard shows a run while it runs."""

    def __init__(self, logdir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FastDMError("--tensorboard needs the tensorboard package: pip install tensorboard "
                              "(or fastdm[tensorboard])") from None
        try:
            self.writer = SummaryWriter(log_dir=logdir, flush_secs=10)
        except OSError as e:
            raise FastDMError(f"cannot write --tensorboard {logdir}: {e.strerror or e}") from None
        self.logdir = logdir

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """image: [C, H, W] in [0, 1]."""
        self.writer.add_image(tag, image.clamp(0, 1), step)

    def figure(self, tag: str, fig, step: int) -> None:
        self.writer.add_figure(tag, fig, step, close=False)

    def curve(self, prefix: str, k: int, curve: dict, logged: dict) -> None:
        """Model k's evaluation curve as it grows: training loss per epoch and test accuracy
        (%) at validation points; ``logged`` remembers what was written."""
        losses, accs = curve.get("loss", []), curve.get("acc", [])
        for ep in range(logged.get("loss", 0), len(losses)):
            self.writer.add_scalar(f"{prefix}/model{k}/train_loss", losses[ep], ep + 1)
        for ep, a in accs[logged.get("acc", 0):]:
            self.writer.add_scalar(f"{prefix}/model{k}/test_accuracy", 100 * a, ep)
        logged.update(loss=len(losses), acc=len(accs))

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def open_board(logdir: str | None) -> Board | None:
    return None if logdir is None else Board(logdir)
