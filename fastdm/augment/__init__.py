"""Differentiable Siamese Augmentation (DSA): parameters as explicit tables, batched apply."""
from .apply import apply_dsa, apply_op
from .params import OPS, DSAParams, crop_shift, cutout_size, parse_strategy
from .sample import sample_per_sample, sample_siamese
from .table import DSATable, build_table

__all__ = ["OPS", "DSAParams", "DSATable", "apply_dsa", "apply_op", "build_table", "crop_shift",
           "cutout_size", "parse_strategy", "sample_per_sample", "sample_siamese"]
