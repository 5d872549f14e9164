"""A literal, slow reading of dm-reference-semantics.md section 4, for tests only.

It reseeds torch's *global* RNG before every draw (as the spec describes the reference
doing) and records every draw, so tests can check fastdm's draws and images against it.
Written from the spec text; it shares no code with fastdm.
"""
import math

import torch
import torch.nn.functional as F


class Oracle:
    def __init__(self, seed):
        self.seed = seed
        self.draws = []

    def reseed(self):
        if self.seed != -1:
            torch.random.manual_seed(self.seed)
            self.seed += 1

    def draw(self, name, fn):
        self.reseed()
        v = fn()
        self.draws.append((name, v))
        return v


def spec_diffaugment(x, strategy, seed, mode="S"):
    o = Oracle(seed)
    ops = strategy.split("_")
    n, c, h, w = x.shape
    siamese = seed != -1

    def share(v):  # every sample uses sample 0's parameters
        return v[:1].expand_as(v).clone() if siamese else v

    def run(op, x):
        if op == "color":
            b = share(o.draw("brightness", lambda: torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device)))
            x = x + (b - 0.5) * 1.0
            m = x.mean(dim=1, keepdim=True)
            s = share(o.draw("saturation", lambda: torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device)))
            x = (x - m) * (s * 2.0) + m
            m = x.mean(dim=[1, 2, 3], keepdim=True)
            cc = share(o.draw("contrast", lambda: torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device)))
            return (x - m) * (cc + 0.5) + m
        if op == "crop":
            sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
            tx = share(o.draw("crop_x", lambda: torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)))
            ty = share(o.draw("crop_y", lambda: torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)))
            out = torch.zeros_like(x)
            for k in range(n):
                for i in range(h):
                    for j in range(w):
                        si, sj = i + int(tx[k]), j + int(ty[k])
                        if 0 <= si < h and 0 <= sj < w:
                            out[k, :, i, j] = x[k, :, si, sj]
            return out
        if op == "cutout":
            ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
            oh = share(o.draw("cutout_x", lambda: torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)))
            ow = share(o.draw("cutout_y", lambda: torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)))
            mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
            for k in range(n):
                for a in range(ch):
                    for b in range(cw):
                        i = min(max(int(oh[k]) - ch // 2 + a, 0), h - 1)
                        j = min(max(int(ow[k]) - cw // 2 + b, 0), w - 1)
                        mask[k, i, j] = 0
            return x * mask.unsqueeze(1)
        if op == "flip":
            f = share(o.draw("flip", lambda: torch.rand(n, 1, 1, 1, device=x.device)))
            return torch.where(f < 0.5, x.flip(3), x)
        if op == "scale":
            sx = o.draw("scale_x", lambda: torch.rand(n)) * (1.2 - 1 / 1.2) + 1 / 1.2
            sy = o.draw("scale_y", lambda: torch.rand(n)) * (1.2 - 1 / 1.2) + 1 / 1.2
            theta = torch.zeros(n, 2, 3)
            for k in range(n):
                src = 0 if siamese else k
                theta[k, 0, 0], theta[k, 1, 1] = sx[src], sy[src]
            return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False).to(x.device),
                                 mode="bilinear", padding_mode="zeros", align_corners=False)
        if op == "rotate":
            t = (o.draw("rotate", lambda: torch.rand(n)) - 0.5) * 2 * 15.0 / 180 * float(math.pi)
            theta = torch.zeros(n, 2, 3)
            for k in range(n):
                a = t[0 if siamese else k]
                theta[k, 0, 0], theta[k, 0, 1] = torch.cos(a), torch.sin(-a)
                theta[k, 1, 0], theta[k, 1, 1] = torch.sin(a), torch.cos(a)
            return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False).to(x.device),
                                 mode="bilinear", padding_mode="zeros", align_corners=False)
        raise ValueError(op)

    if mode == "S":
        k = int(o.draw("op", lambda: torch.randint(0, len(ops), size=(1,))))
        x = run(ops[k], x)
    else:
        for op in ops:
            x = run(op, x)
    return x.contiguous(), o.draws
