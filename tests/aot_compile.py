"""Compile the fused kernels ahead of time for a CUDA target, without a GPU (Triton's bundled
ptxas): the interpreter accepts code the compiler rejects, so this catches what the CPU tests
cannot. Run in a process without TRITON_INTERPRET: ``python tests/aot_compile.py dsa|mmd|family [90]``.
Prints one line per compiled variant; exits non-zero on the first failure.
"""
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastdm.ops import attention as att  # noqa: E402
from fastdm.ops import characteristic as cf  # noqa: E402
from fastdm.ops import dsa  # noqa: E402
from fastdm.ops import gaussian_mmd as gauss  # noqa: E402
from fastdm.ops import linear_mmd as lin  # noqa: E402
from fastdm.ops import segments as seg  # noqa: E402

POINTERS = {"group_ptr": "*i64", "ip_ptr": "*i32", "fp_ptr": "*fp32", "mean_ptr": "*fp32",
            "std_ptr": "*fp32", "sum_ptr": "*fp32", "gsum_ptr": "*fp32"}


# float scalars (the rest are int32)
FLOATS = {"p", "alpha", "beta"}


def _pointer(name: str) -> str:
    if name in POINTERS:
        return POINTERS[name]
    # MMD layouts: class offsets and counts are int64; partition maps and row classes too
    return "*i64" if name.endswith(("off_ptr", "cnt_ptr")) or name in (
        "rc_ptr", "source_ptr", "tile_ptr", "index_ptr", "seg_ptr") else "*fp32"


def compile_variant(fn, target, dtypes: dict, constexprs: dict):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = dtypes.get(name, _pointer(name))
        elif name in FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=target)


def dsa_variants():
    full_s = 63          # mode S with every op
    seg1, seg2 = 31, 32  # mode M default strategy: color..scale, then rotate
    blocks = dict(BLOCK_C=4, BLOCK_P=256)
    for union in (full_s, seg1, seg2, 1, 2 | 4 | 8):
        taps = dsa._taps(union)
        for x_t, out_t, norm in (("*fp32", "*fp32", False), ("*bf16", "*bf16", False),
                                 ("*u8", "*fp32", True)):
            yield (dsa._fwd_kernel, {"x_ptr": x_t, "out_ptr": out_t},
                   dict(ANY=union, NTAPS=taps, NORM=norm, F=1, **blocks))
        for g_t in ("*fp32", "*bf16"):
            yield (dsa._bwd_kernel, {"g_ptr": g_t, "dx_ptr": g_t}, dict(ANY=union, **blocks))
            if union & 1:
                yield (dsa._grad_sum_kernel, {"g_ptr": g_t}, dict(ANY=union, NTAPS=taps, **blocks))
    for x_t, norm in (("*fp32", False), ("*bf16", False), ("*u8", True)):
        yield dsa._sum_kernel, {"x_ptr": x_t}, dict(NORM=norm, F=1, **blocks)
    # grayscale blocks (one channel, 1024 pixels) and fp16, for the full mode S kernel set
    gray = dict(BLOCK_C=1, BLOCK_P=1024)
    for x_t in ("*fp32", "*fp16"):
        yield dsa._fwd_kernel, {"x_ptr": x_t, "out_ptr": x_t}, dict(ANY=63, NTAPS=4, NORM=False, F=1,
                                                                    **gray)
        yield dsa._bwd_kernel, {"g_ptr": x_t, "dx_ptr": x_t}, dict(ANY=63, **gray)
        yield dsa._grad_sum_kernel, {"g_ptr": x_t}, dict(ANY=63, NTAPS=4, **gray)
        yield dsa._sum_kernel, {"x_ptr": x_t}, dict(NORM=False, F=1, **gray)


def family_variants():
    """The partition decode in the DSA kernels; DataDAM's attention maps; NCFM's
    characteristic function."""
    blocks = dict(BLOCK_C=4, BLOCK_P=256)
    for factor in (2, 3):
        for union in (63, 31, 32, 1 | 2 | 4 | 8):
            for t in ("*fp32", "*bf16"):
                yield (dsa._fwd_kernel, {"x_ptr": t, "out_ptr": t},
                       dict(ANY=union, NTAPS=dsa._taps(union), NORM=False, F=factor, **blocks))
                yield (dsa._bwd_decode_kernel, {"g_ptr": t, "dx_ptr": t},
                       dict(F=factor, ANY=union, **blocks))
        yield dsa._sum_kernel, {"x_ptr": "*fp32"}, dict(NORM=False, F=factor, **blocks)
    for t in ("*fp32", "*bf16", "*fp16"):
        for pow1 in (True, False):
            yield att._att_fwd_kernel, {"a_ptr": t}, dict(POW1=pow1, BLOCK_C=32, BLOCK_P=64)
            yield (att._att_bwd_kernel, {"a_ptr": t, "da_ptr": t},
                   dict(POW1=pow1, BLOCK_C=32, BLOCK_P=64))
        for dist in (True, False):
            yield (cf._cf_kernel, {"x_ptr": t},
                   dict(DIST=dist, BLOCK_N=16, BLOCK_M=64, BLOCK_K=64))
        yield cf._cf_weights_kernel, {"x_ptr": t}, dict(BLOCK_N=16, BLOCK_M=64, BLOCK_K=64)


def mmd_variants():
    """Segment sums, the linear and the Gaussian MMD."""
    rows = dict(BLOCK_N=16, BLOCK_D=256)
    for t in ("*fp32", "*bf16", "*fp16"):
        yield seg._segsum_kernel, {"x_ptr": t}, rows
        yield lin._linear_fwd_kernel, {"y_ptr": t}, rows
        yield lin._linear_bwd_kernel, {"y_ptr": t, "dy_ptr": t}, rows
        for bm, bn in ((16, 16), (64, 16), (64, 64)):
            for self_pairs, save in ((False, True), (True, True), (True, False)):
                yield (gauss._gauss_fwd_kernel, {"a_ptr": t, "b_ptr": t, "ctr_ptr": t},
                       dict(SELF=self_pairs, SAVE_W=save, BM=bm, BN=bn, BD=32))
            yield (gauss._gauss_bwd_kernel, {"r_ptr": t, "y_ptr": t, "dy_ptr": t},
                   dict(BM=32, BN=bn, BD=64))


VARIANTS = {"dsa": dsa_variants, "mmd": mmd_variants, "family": family_variants}


def main(op: str = "dsa", arch: int = 90) -> None:
    target = GPUTarget("cuda", arch, 32)
    todo = list(VARIANTS[op]())
    print(f"variants {len(todo)}", flush=True)
    for fn, dtypes, consts in todo:
        k = compile_variant(fn, target, dtypes, consts)
        assert k.asm.get("cubin"), f"{fn.__name__}: no cubin"  # ptxas ran: machine code exists
        print(f"ok sm_{arch} {fn.__name__} {dtypes} {consts} cubin={len(k.asm['cubin'])} B", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dsa", int(sys.argv[2]) if len(sys.argv) > 2 else 90)
