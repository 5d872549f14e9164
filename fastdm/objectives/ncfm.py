"""``ncfm``: NCFM's characteristic-function matching (Wang et al., CVPR 2025), as its released
code computes it (``NCFM.py``: ``match_loss``, ``CFLossFunc``; commit de92fb8), with random
frequencies:

    loss_c = 300 * mean_m sqrt(alpha (|Phi_r| - |Phi_s|)^2 + beta max(2 (|Phi_r||Phi_s|
             - Re_r Re_s - Im_r Im_s), 1e-12)),   alpha = beta = 0.5

Phi: the empirical characteristic function of the class's L2-normalised embeddings
(F.normalize, dim 1) at M = 4096 frequencies t_m ~ N(0, I), unscaled. NCFM's learned sampling
network (its min-max frequency sampler) is off in every released config, and so it is here:
the frequencies are drawn fresh every iteration, from (seed, iteration) -- shared by the classes
of an iteration, where NCFM draws per class (each class's loss has the same distribution either
way; the classes are independent terms).

Fused op: ``fastdm.ops.characteristic`` (torch reference beside it). The real side is reduced to
per-class sums of cos and sin right after the embedder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import rng
from ..ops.characteristic import cf_distance, cf_sums
from ..settings import Setting, positive
from .base import Objective, register

SCALE = 300.0  # match_loss's factor


@register
class CharacteristicFunction(Objective):
    name = "ncfm"
    title = "NCFM loss"
    ops = ("characteristic",)
    settings = (
        Setting("frequencies", int, None, "frequencies t ~ N(0, I) drawn per iteration",
                "method", minimum=1, auto="4096", objective="ncfm"),
        Setting("amplitude_weight", float, None, "alpha, the weight of the amplitude term",
                "method", check=positive("--amplitude-weight"), auto="0.5", objective="ncfm"),
        Setting("phase_weight", float, None, "beta, the weight of the phase term", "method",
                check=positive("--phase-weight"), auto="0.5", objective="ncfm"),
    )

    defaults = {"frequencies": 4096, "amplitude_weight": 0.5, "phase_weight": 0.5}

    def __init__(self, config, backends, device):
        super().__init__(config, backends, device)
        self._t = None

    def begin(self, iteration):
        self.iteration, self._t = iteration, None

    def frequencies(self, d: int) -> torch.Tensor:
        """This iteration's t [M, d] (float32): torch's CPU generator seeded from (seed,
        iteration), the same on every device and in every process."""
        if self._t is None or self._t.shape[1] != d:
            seed = int(rng.hash32(self.config.seed, rng.FREQ, self.iteration))
            g = torch.Generator().manual_seed(seed)
            with torch.inference_mode(False):  # drawn in the real branch, used by both
                t = torch.randn((self.config.frequencies, d), generator=g)
                self._t = t.to(self.device, non_blocking=True)
        return self._t

    def reduce_real(self, features, counts):
        x = F.normalize(features.float(), dim=1)
        return (cf_sums(x, counts.device, self.frequencies(x.shape[1]),
                        backend=self.backends["characteristic"]),)

    def loss(self, real, real_counts, syn, syn_counts, value=True):
        (sums,) = real
        x = F.normalize(syn.float(), dim=1)
        cfg = self.config
        return SCALE * cf_distance(sums, real_counts.device, x, syn_counts.device,
                                   self.frequencies(x.shape[1]), cfg.amplitude_weight,
                                   cfg.phase_weight, backend=self.backends["characteristic"])
