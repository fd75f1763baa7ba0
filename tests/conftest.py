import os
import tempfile

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is imported: set it before any test imports it,
# so Triton kernels run (interpreted) on the CPU of machines without a GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()

# the shard cache (remote shards, sha256 markers of local ones) of test runs stays out of ~/.cache
os.environ.setdefault("PTFT_CACHE_DIR", tempfile.mkdtemp(prefix="ptft-test-cache-"))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; run benchmarks/gpu_check.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
