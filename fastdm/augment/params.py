"""DSA hyper-parameters and strategy strings."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import FastDMError

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass
class DSAParams:
    """The reference's ParamDiffAug values (spec section 4)."""

    aug_mode: str = "S"          # 'S': one op per call (DM); 'M': every op in order
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0   # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    def __post_init__(self):
        if self.aug_mode not in ("S", "M"):
            raise FastDMError(f"unknown augmentation mode '{self.aug_mode}'; choose S or M")

    def to_dict(self) -> dict:
        return asdict(self)


def parse_strategy(strategy: str | None) -> tuple[str, ...]:
    """'color_crop_flip' -> ('color', 'crop', 'flip'); '', 'none', 'None' -> ()."""
    if strategy is None or strategy in ("", "none", "None"):
        return ()
    ops = tuple(strategy.split("_"))
    bad = [op for op in ops if op not in OPS]
    if bad:
        raise FastDMError(f"unknown augmentation op '{bad[0]}' in strategy '{strategy}'; ops are "
                          f"{', '.join(OPS)} joined by '_' (or 'none')")
    return ops


def crop_shift(h: int, w: int, p: DSAParams) -> tuple[int, int]:
    return int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)


def cutout_size(h: int, w: int, p: DSAParams) -> tuple[int, int]:
    return int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5)
