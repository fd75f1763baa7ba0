"""Every .cu file compiles with nvcc for sm_80 and sm_90, so CUDA code cannot rot on
machines without a GPU. The .cu files include only csrc/ and CUDA headers (no torch).
Both architectures go through one nvcc call with --threads 2: the two compilations run
side by side on a 2-core CI machine instead of one after the other."""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CU_FILES = sorted((ROOT / "csrc").rglob("*.cu"))
NVCC = shutil.which("nvcc")


@pytest.mark.slow  # nvcc compiles
@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA sources are not compiled on this machine")
@pytest.mark.parametrize("cu", CU_FILES, ids=[p.name for p in CU_FILES])
def test_nvcc_compiles(cu, tmp_path):
    archs = ("80", "90")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    cmd = [NVCC, "-c", str(cu), "-o", str(tmp_path / "k.o"), *gencode, "--threads", "2", "-std=c++17",
           "-O2", "-I", str(ROOT / "csrc"), "-Werror", "all-warnings", "-DPTFT_WITH_CUDA=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nvcc failed on {cu.name}:\n{proc.stderr[-4000:]}"
    cuobjdump = pathlib.Path(NVCC).with_name("cuobjdump")
    if cuobjdump.exists():  # both machine codes are in the object
        listing = subprocess.run([str(cuobjdump), "--list-elf", str(tmp_path / "k.o")], capture_output=True,
                                 text=True).stdout
        assert all(f"sm_{a}" in listing for a in archs), listing


def test_cuda_sources_exist():
    ops = {p.parent.name for p in CU_FILES}
    wanted = {"attention", "mlm", "contrastive"}
    assert wanted <= ops, f"missing CUDA sources for: {ops ^ wanted}"
