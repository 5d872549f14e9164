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

``--frequency-draw``: ``full`` draws t [M, D] as above; ``span`` draws only the frequencies'
coordinates in the span of each class's features, and the gradient's component outside
(``fastdm.objectives.span_draw``): the same joint distribution of each class's loss and
gradient at n/D of the arithmetic, shared by the classes of an iteration. Auto: span on the CPU
(where the M x D x n products were 12 % of a DM iteration at CIFAR-10), full on CUDA (the fused
kernel's products are cheap there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import rng
from ..backend import native_for
from ..devices import resolve_device
from ..ops.characteristic import cf_distance, cf_sums
from ..settings import Setting, positive
from . import span_draw as span
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
        Setting("frequency_draw", str, None, "full: t ~ N(0, I) shared by the classes; span: "
                "only t's coordinates in each class's feature span (the same distribution, n/D "
                "of the arithmetic)", "method", choices=("full", "span"),
                auto="span on the CPU, full on CUDA", objective="ncfm"),
    )

    defaults = {"frequencies": 4096, "amplitude_weight": 0.5, "phase_weight": 0.5}

    @classmethod
    def resolve(cls, values):
        values = super().resolve(values)
        if values.get("frequency_draw") is None:
            device = resolve_device(values.get("device") or "auto")
            values["frequency_draw"] = "span" if device.type == "cpu" else "full"
        return values

    def __init__(self, config, backends, device):
        super().__init__(config, backends, device)
        self._t = self._draws = None
        # the span draw's real side: cos and sin sums by the native kernel on the CPU
        self.sums_backend = native_for("phase_sums", self.device) \
            if config.frequency_draw == "span" else None

    def begin(self, iteration):
        self.iteration, self._t, self._draws = iteration, None, None

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
        # F.normalize's rows (up to rounding) by one multiply: its division took 2.5x longer
        x = features.float()
        x = x * x.norm(dim=1, keepdim=True).clamp_min(1e-12).reciprocal()
        if self.config.frequency_draw == "span":
            return self._span_real(x, counts)
        return (cf_sums(x, counts.device, self.frequencies(x.shape[1]),
                        backend=self.backends["characteristic"]),)

    def loss(self, real, real_counts, syn, syn_counts, value=True):
        x = F.normalize(syn.float(), dim=1)
        cfg = self.config
        if cfg.frequency_draw == "span":
            return self._span_loss(real, real_counts, x, syn_counts)
        (sums,) = real
        return SCALE * cf_distance(sums, real_counts.device, x, syn_counts.device,
                                   self.frequencies(x.shape[1]), cfg.amplitude_weight,
                                   cfg.phase_weight, backend=self.backends["characteristic"])

    # -- the span draw (fastdm.objectives.span_draw) ---------------------------------------------
    def _span_draws(self, d):
        """This iteration's Z [M, batch_real], Z_s [M, n_s], W^T [n_s, D], shared by its classes."""
        cfg = self.config
        if self._draws is None or self._draws[0] != d:
            with torch.inference_mode(False):
                z, zs, wt = (t.to(self.device) for t in span.draws(
                    cfg.seed, self.iteration, cfg.frequencies, cfg.batch_real,
                    cfg.ipc * cfg.factor ** 2, d))
            self._draws = (d, z, zs, wt)
        return self._draws[1:]

    def _span_real(self, x, counts):
        """(per-class sums of cos and sin [k, 2, M], the features, the factors of their spans
        [k, n, n] (span_draw.Span: L, or P zero-padded to the largest n) and which are L [k],
        on the host)."""
        cfg, host = self.config, counts.host.tolist()
        ns, n_max, d = cfg.ipc * cfg.factor ** 2, max(host, default=0), x.shape[1]
        z = self._span_draws(d)[0]
        sums = x.new_empty((len(host), 2, cfg.frequencies))
        facs = torch.zeros((len(host), n_max, n_max), dtype=torch.float64, device=x.device)
        tri, off = [], 0
        for j, n in enumerate(host):
            span.check_fits(n, ns, d)
            (fac, lower), sums[j] = span.real_class(x[off:off + n], z[:, :n], self.sums_backend)
            facs[j, :fac.shape[0], :fac.shape[1]] = fac  # (P's rows past its rank stay zero)
            tri.append(lower)
            off += n
        return sums, x, facs, torch.tensor(tri, dtype=torch.bool)

    def _span_loss(self, real, real_counts, xs, syn_counts):
        sums, x, facs, tri = real
        cfg = self.config
        z, zsyn, wt = self._span_draws(xs.shape[1])
        weight = SCALE / cfg.frequencies   # SCALE x the mean over the frequencies
        losses, off_r, off_s = [], 0, 0
        for j, (n, ns, lower) in enumerate(zip(real_counts.host.tolist(), syn_counts.host.tolist(),
                                               tri.tolist())):
            losses.append(span.SpanLoss.apply(
                xs[off_s:off_s + ns], x[off_r:off_r + n], facs[j, :n, :n], lower, z[:, :n], zsyn,
                wt, sums[j] / n, cfg.amplitude_weight, cfg.phase_weight, weight))
            off_r, off_s = off_r + n, off_s + ns
        return torch.stack(losses).float()
