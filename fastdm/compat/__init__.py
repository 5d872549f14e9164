"""Drop-in replacements for the reference's utils.py (VICO-UoE/DatasetCondensation):
DiffAugment, ParamDiffAug, get_network, get_dataset, get_eval_pool, evaluate_synset and
TensorDataset, with the reference's signatures. docs/compat.md says what each matches.

Change ``from utils import ...`` to ``from fastdm.compat import ...`` and existing DM code keeps
its numbers: for the same seed, DiffAugment draws the same random values in the same order
(spec section 4) and returns the same images on CPU and CUDA, but from private
torch.Generator objects seeded with seed, seed+1, ... so the caller's global RNG is never
reseeded. Without a seed (seed=-1) it draws from the global RNG, exactly as the reference does.
Unlike the reference it works for a batch of one.
"""
from .augment import DiffAugment, ParamDiffAug, draw_reference_table, get_network
from .datasets import TensorDataset, get_dataset
from .evaluation import evaluate_synset, get_eval_pool

__all__ = ["DiffAugment", "ParamDiffAug", "get_network", "get_dataset", "get_eval_pool",
           "evaluate_synset", "TensorDataset", "draw_reference_table"]
