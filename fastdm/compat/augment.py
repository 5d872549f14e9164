"""The reference's DiffAugment, ParamDiffAug and get_network."""
from __future__ import annotations

import torch

from ..augment import DSAParams, build_table, crop_shift, cutout_size, parse_strategy
from ..errors import FastDMError
from ..models import create_model
from ..ops.dsa import dsa_augment


class ParamDiffAug:
    """The reference's parameter object (same attribute names and defaults)."""

    def __init__(self):
        d = DSAParams()
        self.aug_mode = d.aug_mode
        self.prob_flip = d.prob_flip
        self.ratio_scale = d.ratio_scale
        self.ratio_rotate = d.ratio_rotate
        self.ratio_crop_pad = d.ratio_crop_pad
        self.ratio_cutout = d.ratio_cutout
        self.brightness = d.brightness
        self.saturation = d.saturation
        self.contrast = d.contrast


def as_dsa_params(param) -> DSAParams:
    """DSAParams from a ParamDiffAug-like object (its attributes), a DSAParams, or None."""
    if param is None:
        return DSAParams()
    if isinstance(param, DSAParams):
        return param
    names = ("aug_mode", "prob_flip", "ratio_scale", "ratio_rotate", "ratio_crop_pad", "ratio_cutout",
             "brightness", "saturation", "contrast")
    return DSAParams(**{k: getattr(param, k) for k in names if hasattr(param, k)})


class _SeedSequence:
    """seed, seed+1, ... each into a fresh generator on the draw's device (None: global RNG)."""

    def __init__(self, seed: int):
        self.next = None if seed == -1 else int(seed)

    def gen(self, device) -> torch.Generator | None:
        if self.next is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(self.next)
        self.next += 1
        return g


def draw_reference_table(x: torch.Tensor, strategy: str, seed: int = -1, param=None):
    """The DSA table for one reference DiffAugment call, drawn in the reference's order.

    Returns ``(table, group, next_seed)``: with a seed every sample uses row 0 (Siamese);
    without one each sample has its own row.
    """
    p = as_dsa_params(param)
    ops = parse_strategy(strategy)
    n, _, h, w = x.shape
    cpu, dev = torch.device("cpu"), x.device
    seeds = _SeedSequence(seed)
    siamese = seed != -1
    if p.aug_mode == "S":
        chosen = int(torch.randint(0, len(ops), size=(1,), generator=seeds.gen(cpu)).item())
        applied = [ops[chosen]]
    else:
        chosen, applied = 0, list(ops)

    # Placeholders for the ops not drawn (mode S); each on the device its real draw would use.
    z_cpu, z_dev = torch.zeros(n), torch.zeros(n, device=dev, dtype=x.dtype)
    zi = torch.zeros(n, dtype=torch.int64, device=dev)
    raw = dict(b=z_dev, s=z_dev, c=z_dev, tx=zi, ty=zi, oh=zi, ow=zi, f=z_dev.float(),
               sx_u=z_cpu, sy_u=z_cpu, rot_u=z_cpu)
    sh, sw = crop_shift(h, w, p)
    ch, cw = cutout_size(h, w, p)
    for op in applied:
        if op == "color":
            for k in ("b", "s", "c"):
                raw[k] = torch.rand(n, 1, 1, 1, dtype=x.dtype, device=dev, generator=seeds.gen(dev)).view(n)
        elif op == "crop":
            raw["tx"] = torch.randint(-sh, sh + 1, size=[n, 1, 1], device=dev, generator=seeds.gen(dev)).view(n)
            raw["ty"] = torch.randint(-sw, sw + 1, size=[n, 1, 1], device=dev, generator=seeds.gen(dev)).view(n)
        elif op == "cutout":
            raw["oh"] = torch.randint(0, h + (1 - ch % 2), size=[n, 1, 1], device=dev,
                                      generator=seeds.gen(dev)).view(n)
            raw["ow"] = torch.randint(0, w + (1 - cw % 2), size=[n, 1, 1], device=dev,
                                      generator=seeds.gen(dev)).view(n)
        elif op == "flip":
            raw["f"] = torch.rand(n, 1, 1, 1, device=dev, generator=seeds.gen(dev)).view(n)
        elif op == "scale":
            raw["sx_u"] = torch.rand(n, generator=seeds.gen(cpu))
            raw["sy_u"] = torch.rand(n, generator=seeds.gen(cpu))
        elif op == "rotate":
            raw["rot_u"] = torch.rand(n, generator=seeds.gen(cpu))
    if siamese:  # every sample takes sample 0's draw
        raw = {k: v[:1] for k, v in raw.items()}
    g = 1 if siamese else n
    table = build_table(ops, p, (h, w), op=torch.full((g,), chosen, dtype=torch.int64), **raw,
                        scalar_trig=True)
    group = torch.zeros(n, dtype=torch.int64, device=dev) if siamese else None
    return table, group, (seeds.next if seeds.next is not None else -1)


def DiffAugment(x: torch.Tensor, strategy: str = "", seed: int = -1, param=None, *,
                backend: str | None = None) -> torch.Tensor:
    """The reference's DiffAugment(x, strategy, seed, param), same numbers, no global reseed.

    ``backend`` ('torch' or 'triton'; default: fastdm.backend's choice for x's device) selects
    the implementation of the ops; the draws are the same on both.
    """
    if strategy in ("None", "none", "") or strategy is None:
        return x
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise FastDMError(f"DiffAugment expects an N x C x H x W tensor, got "
                          f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise FastDMError(f"DiffAugment expects floating-point images, got {x.dtype}")
    table, group, next_seed = draw_reference_table(x, strategy, seed, param)
    if param is not None and not isinstance(param, DSAParams):
        param.Siamese = seed != -1  # the reference leaves these on the object
        param.latestseed = next_seed
    # on the backend fastdm.backend picks for this device (fused Triton kernels on CUDA)
    return dsa_augment(x, table, group, backend=backend)


def get_network(model: str, channel: int, num_classes: int, im_size=(32, 32)) -> torch.nn.Module:
    """The reference's get_network: same architectures (with ``embed``), on CUDA if present.

    Unlike the reference it does not reseed the global RNG with the clock; the weights come
    from the global RNG's current state, as any new nn.Module's do.
    """
    net = create_model(model, channel, num_classes, im_size)
    return net.to("cuda" if torch.cuda.is_available() else "cpu")
