"""The fused kernels (DSA with the partition decode; segment sums, linear and Gaussian MMD;
attention maps; the characteristic function) compile for real GPUs (sm_80, sm_90) with Triton's bundled
ptxas, no GPU needed: the interpreter runs code the compiler would reject, so the CPU tests
alone cannot tell. Runs tests/aot_compile.py in a process without TRITON_INTERPRET."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

pytestmark = pytest.mark.slow  # ahead-of-time kernel compiles (minutes cold)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("op,least", [("dsa", 40), ("mmd", 36), ("family", 40)])
def test_every_kernel_variant_compiles_to_a_cubin(op, least, arch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, os.path.join(root, "tests", "aot_compile.py"), op, str(arch)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    total = int(r.stdout.split("variants ", 1)[1].split()[0])
    assert total >= least and r.stdout.count(f"ok sm_{arch} ") == total, r.stdout
