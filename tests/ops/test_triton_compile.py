"""Every Triton autotune entry compiles for sm_90 (bf16, head dim 128) without a GPU: the
interpreter runs the kernels' arithmetic but not Triton's compiler, so layout or lowering
errors would otherwise first show on a lent GPU. Uses the ptxas/cuobjdump shipped in the
triton wheel, in a child process (the test session runs Triton interpreted); also holds the
attention forward to zero register spills."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POINTER_TYPES = {"lse_ptr": "*fp32", "delta_ptr": "*fp32", "dq_ptr": "*fp32", "pad_ptr": "*u8",
                 "seg_ptr": "*i32", "qr_ptr": "*i32", "kr_ptr": "*i32", "scale_ptr": "*fp32",
                 "excl_ptr": "*i64", "out_ptr": "*fp32", "rlse_ptr": "*fp32", "grow_ptr": "*fp32",
                 "clse_ptr": "*fp32", "gcol_ptr": "*fp32", "da_ptr": "*fp32", "ds_ptr": "*fp32",
                 "pmax_ptr": "*fp32", "psum_ptr": "*fp32"}


def _compile(fn, consts, num_warps, num_stages):
    """(register count, stack bytes) of `fn` compiled for sm_90 with bf16 tensors."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = POINTER_TYPES.get(name, "*bf16")
        elif name in ("qk_scale", "scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    kernel = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        out = subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    usage = dict(field.split(":", 1) for field in out.strip().splitlines()[-1].split() if ":" in field)
    return int(usage["REG"]), int(usage["STACK"])


def _compile_all(which: str) -> list:
    rows = []
    if which in ("fwd", "bwd"):
        from ptft_engine.ops.attention import triton as triton_attention

        for meta in triton_attention.configs(which):
            consts = dict(CAUSAL=True, HAS_PAD=True, HAS_SEG=True, DOT_PREC="tf32", BLOCK_D=128,
                          BLOCK_M=meta["BLOCK_M"], BLOCK_N=meta["BLOCK_N"])
            rows.append([meta, *_compile(triton_attention._raw[which], consts, meta["num_warps"], meta["num_stages"])])
        return rows
    from ptft_engine.ops.contrastive import triton as triton_contrastive

    for name, fn in triton_contrastive.KERNELS.items():
        params = inspect.signature(fn.fn).parameters
        cfg = triton_contrastive.GPU_CONFIG
        consts = {key: True for key in params if key.startswith(("HAS_", "WANT_"))}
        consts.update({key: value for key, value in cfg.items() if key in params})
        consts["PRECISION"] = "tf32"
        rows.append([name, *_compile(fn, consts, cfg["num_warps"], 2)])
    return rows


def _run_child(which: str) -> list:
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, __file__, which], capture_output=True, text=True, env=env, timeout=800)
    assert proc.returncode == 0, f"compiling the {which} Triton kernels for sm_90 failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_attention_configs_compile_for_sm90(kind):
    rows = _run_child(kind)
    assert len(rows) >= 3
    if kind == "fwd":
        spills = [(meta, stack) for meta, _, stack in rows
                  if stack and (meta["BLOCK_M"], meta["BLOCK_N"]) != (128, 128)]
        assert not spills, f"fwd configs spill registers at D=128: {spills}"


@pytest.mark.slow
def test_contrastive_kernels_compile_for_sm90():
    rows = _run_child("contrastive")
    assert len(rows) >= 2 and all(regs > 0 for _, regs, _ in rows)


if __name__ == "__main__":
    print(json.dumps(_compile_all(sys.argv[1])))
