"""Evaluation protocols: how a model is trained on a (synthetic) set before it is tested.

A number in this field means something only with its protocol. ``dm`` is the DM paper's (and
IDM's and M3D's); ``soft`` is the soft-label recipe the field compares with (a teacher trained
on the real data labels every augmented batch); the others are the family methods' own, as
their released code trains (fastdm's notes say where fastdm differs). Each protocol fills the
evaluation's defaults; options given on the command line override them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import FastDMError


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    epochs: int
    batch: int
    optimizer: str = "sgd"            # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9             # sgd only
    weight_decay: float = 5e-4
    # dm: epochs + 1 passes, x0.1 after pass epochs // 2 + 1 with a new optimiser (the
    # reference's evaluate_synset); multistep: x gamma from each milestone, epoch E * a // b
    # for each (a, b) (DANCE's 2E // 3, 5E // 6); quarter-cosine: DD-Ranking's "cosine",
    # lr (1 + cos(pi e / 2E)) / 2 per epoch (it ends at half the rate)
    schedule: str = "dm"
    milestones: tuple[tuple[int, int], ...] = ()
    gamma: float = 0.1
    strategy: str | None = None       # None: the synset's (else the dataset's) DSA strategy
    aug_mode: str | None = None       # None: the synset's, else S
    cutmix: float = 0.0               # CutMix probability per batch (Beta(1, 1) area)
    labels: str = "hard"              # hard | soft (the teacher's logits on the augmented batch)
    temperature: float = 1.0          # soft labels: KL(teacher / T || student / T), unscaled (DD-Ranking)
    validate_every: int = 0           # test every N epochs and report the best too (0: final only)
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return asdict(self)


PROTOCOLS = {p.name: p for p in (
    Protocol("dm", "the DM paper's: hard labels, SGD 0.01, 1000 epochs, x0.1 at the half, DSA",
             epochs=1000, batch=256),
    Protocol("soft", "DD-Ranking's soft-label configuration: a teacher trained on the real data "
                     "labels each augmented, CutMix-ed batch (KL, T 1), AdamW 1e-3 (wd 0.01), "
                     "DD-Ranking's cosine (to half the rate), 300 epochs, DSA",
             epochs=300, batch=256, optimizer="adamw", lr=1e-3, weight_decay=0.01,
             schedule="quarter-cosine", strategy=None, cutmix=1.0, labels="soft", temperature=1.0,
             notes=("DD-Ranking searches the learning rate over {1e-3, 5e-3, 1e-2, 5e-2, 1e-1} "
                    "and reports the best test accuracy over checkpoints every 20 epochs; fastdm "
                    "trains at 1e-3 and reports the final accuracy (no choice on the test set)",
                    "DD-Ranking's only soft config (ImageNet-1K) augments with random resized "
                    "crops and flips; fastdm uses the dataset's DSA strategy per image")),
    Protocol("datadam", "DataDAM's utils.evaluate_synset: hard labels, SGD 0.01, batch 64, 1800 "
                        "epochs, x0.1 at the half, DSA",
             epochs=1800, batch=64),
    Protocol("dance", "DANCE's train.py: hard labels, SGD 0.01, batch 64, 1500 epochs, x0.2 at "
                      "1000 and 1250, colour/crop/flip/scale/rotate per image, CutMix 0.5",
             epochs=1500, batch=64, schedule="multistep", milestones=((2, 3), (5, 6)), gamma=0.2,
             strategy="color_crop_flip_scale_rotate", aug_mode="M", cutmix=0.5, validate_every=250,
             notes=("DANCE (IDC) applies flip and colour always and one of crop, scale, rotate; "
                    "fastdm's mode M applies all five in order",
                    "DANCE reports the best of its tests every 250 epochs: acc_best here")),
    Protocol("ncfm", "NCFM's evaluate.py: hard labels, AdamW 1e-3 (wd 0.01), batch 128, 2000 "
                     "epochs, x0.5 at 400/800/1200/1600, colour/crop/flip/scale/rotate, CutMix 0.5",
             epochs=2000, batch=128, optimizer="adamw", lr=1e-3, weight_decay=0.01,
             schedule="multistep", milestones=((1, 5), (2, 5), (3, 5), (4, 5)), gamma=0.5,
             strategy="color_crop_flip_scale_rotate", aug_mode="M", cutmix=0.5, validate_every=100,
             notes=("as dance's: all five ops in order where NCFM's IDC augmentation draws one "
                    "of crop, scale, rotate",
                    "NCFM reports the best of its tests every 100 epochs: acc_best here")),
)}
# the methods whose evaluation is DM's
ALIASES = {"idm": "dm", "m3d": "dm"}


def get_protocol(name: str | None) -> Protocol:
    name = name or "dm"
    name = ALIASES.get(name, name)
    if name not in PROTOCOLS:
        raise FastDMError(f"unknown protocol '{name}'; choose one of "
                          f"{', '.join([*PROTOCOLS, *ALIASES])}")
    return PROTOCOLS[name]


def passes(schedule: str, epochs: int) -> int:
    """The passes over the data a schedule makes: the reference's range(epochs + 1) for dm."""
    return epochs + 1 if schedule == "dm" else epochs
