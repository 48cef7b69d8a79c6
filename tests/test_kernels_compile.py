"""IPCV's Triton kernels compile for the GPUs they are meant for, without a GPU.

Triton's interpreter (tests/test_rebuild_kernel.py, tests/test_search_kernel.py) checks what the
kernels compute, but not that the compiler takes them: a GPU session is rare, and a kernel that
fails to compile there wastes it. Here each kernel is compiled ahead of time, down to a cubin by
the ptxas that ships with Triton, for Hopper (sm_90, the H100/H200 the benchmarks use) and Ampere
(sm_80), with the specialisations a launch gives (16-byte aligned tensors, widths divisible by 16).

``.ci/run`` runs this file twice: with the Triton the dev extra installs, and with the GPU image's
(3.6.0, the one torch 2.11 pins; ``IPCV_EXPECT_TRITON`` names it, and then a missing ptxas fails
instead of skipping), so that a kernel the GPU machine's compiler refuses is found here."""

from __future__ import annotations

import inspect
import os
import re

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from ipcv import rebuild_kernel, search_kernel  # noqa: E402

ALIGNED = [["tt.divisibility", 16]]
EXPECTED = os.environ.get("IPCV_EXPECT_TRITON")  # the version .ci/run put first on the path, if any
pytestmark = pytest.mark.kernel


def _compile(kernel, types: dict[str, str], constexprs: dict, aligned: list[str], arch: int, warps: int):
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {n: types.get(n, "constexpr") for n in names}
    attrs = {(names.index(n),): ALIGNED for n in aligned}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    try:
        return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    except (FileNotFoundError, RuntimeError) as err:
        if "ptxas" in str(err) and "not found" in str(err).lower() and not EXPECTED:
            pytest.skip(f"this Triton has no ptxas: {err}")
        raise


@pytest.mark.skipif(not EXPECTED, reason="IPCV_EXPECT_TRITON is not set: the dev extra's Triton is tested")
def test_the_triton_under_test_is_the_one_expected():
    """Guards the second run: a path that did not take effect would test the other Triton twice."""
    assert triton.__version__ == EXPECTED, (triton.__version__, triton.__file__)


@pytest.mark.skipif(not hasattr(triton.language, "topk") and not EXPECTED, reason="the fused search needs tl.topk (Triton 3.4)")
@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_the_fused_search_compiles_onto_tensor_cores(arch, dtype):
    """The default tiles, and the largest ``benchmarks/ipcv_parts.py`` times; the distance product
    must use the tensor cores (wgmma on Hopper, mma on Ampere): that is its reason to exist."""
    types = {"removed_ptr": f"*{dtype}", "kept_ptr": f"*{dtype}", "norms_ptr": "*fp32", "keys_ptr": "*i64",
             **{n: "i32" for n in ("n_removed", "n_kept", "dim", "n_tiles", "tiles_per_split")}}
    for block_m, block_n in ((search_kernel.BLOCK_M, search_kernel.BLOCK_N), (128, 64)):
        constexprs = {"KP": 16, "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": search_kernel.BLOCK_D,
                      "UPCAST": False}
        compiled = _compile(search_kernel._nearest_keys, types, constexprs,
                            ["removed_ptr", "kept_ptr", "norms_ptr", "keys_ptr", "dim"], arch, search_kernel.WARPS)
        assert compiled.asm["cubin"], (block_m, block_n)
        ptx = compiled.asm["ptx"]
        assert ("wgmma.mma_async" if arch == 90 else "mma.sync") in ptx, (arch, block_m, block_n)


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("uniform", [True, False])
def test_the_fused_rebuild_compiles(arch, uniform):
    types = {"kept_ptr": "*bf16", "offset_ptr": "*fp32", "index_ptr": "*i64",
             "weight_ptr": "*i64" if uniform else "*fp32", "kept_pos_ptr": "*i64", "removed_pos_ptr": "*i64",
             "out_ptr": "*bf16", "n_removed": "i32", "width": "i32", "scale": "fp32"}
    compiled = _compile(rebuild_kernel._rebuild_rows, types, {"K": 10, "UNIFORM": uniform, "BLOCK": rebuild_kernel.BLOCK},
                        ["kept_ptr", "offset_ptr", "out_ptr", "width"], arch, rebuild_kernel.WARPS)
    assert compiled.asm["cubin"]
    # one rounding to nearest of the float32 sum (the interpreter truncates; the GPU must not)
    conversions = set(re.findall(r"cvt\.[a-z0-9.]*bf16[a-z0-9]*\.f32", compiled.asm["ptx"]))
    assert conversions and all(c.startswith("cvt.rn.") for c in conversions), conversions
