"""DD-Ranking's scores (Li et al., 2025, "DD-Ranking: Rethinking the Evaluation of Dataset
Distillation"; the ddranking package), from four accuracies, each a fraction in [0, 1]:

- HLR, hard label recovery = full-data accuracy - the synset's accuracy with hard labels.
  How much of real-data training the synthetic images recover by themselves; lower is better.
- IOR, improvement over random = the synset's accuracy - random real images' accuracy, both
  under the same soft-label protocol (random: the same images per class). What the synthesis
  adds over picking real images, with the labels and augmentation held equal; higher is better.
- LRS, label-robust score = (exp(w IOR - (1 - w) HLR) - exp(-1)) / (exp(1) - exp(-1)), w = 0.5:
  both in one number in [0, 1] (IOR and HLR lie in [-1, 1]); higher is better.
"""
from __future__ import annotations

import math

WEIGHT = 0.5


def lrs(hlr: float, ior: float, weight: float = WEIGHT) -> float:
    e = math.exp(weight * ior - (1 - weight) * hlr)
    return (e - math.exp(-1)) / (math.exp(1) - math.exp(-1))


def scores(full_acc: float, syn_hard_acc: float, syn_soft_acc: float, rnd_soft_acc: float,
           weight: float = WEIGHT) -> dict:
    for name, v in (("full", full_acc), ("synset hard", syn_hard_acc), ("synset soft", syn_soft_acc),
                    ("random soft", rnd_soft_acc)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} accuracy {v} is not a fraction in [0, 1]")
    hlr = full_acc - syn_hard_acc
    ior = syn_soft_acc - rnd_soft_acc
    return {"hlr": hlr, "ior": ior, "lrs": lrs(hlr, ior, weight), "weight": weight,
            "full_acc": full_acc, "syn_hard_acc": syn_hard_acc, "syn_soft_acc": syn_soft_acc,
            "rnd_soft_acc": rnd_soft_acc}
