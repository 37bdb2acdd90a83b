"""The native CPU kernel (flexgnn_core/native): the same products as torch.sparse.mm, and a clean fallback."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from flexgnn_core import native

HAVE_COMPILER = shutil.which("c++") is not None and shutil.which("ninja") is not None


def _csr(rows: int, width: int, index_dtype: torch.dtype, seed: int):
    """A random CSR with empty rows (the first, the last and some between) and repeated degrees."""
    gen = torch.Generator().manual_seed(seed)
    degree = torch.randint(0, 9, (rows,), generator=gen)
    degree[0] = degree[-1] = 0
    degree[rows // 3] = min(40, width)  # a long row: more entries than the kernel's prefetch distance
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    crow[1:] = degree.cumsum(0)
    col = torch.cat([torch.randperm(width, generator=gen)[:int(d)].sort().values for d in degree])
    return crow.to(index_dtype), col.to(index_dtype)


def _reference(crow, col, values, x, width):
    """torch.sparse.mm per head, in float64: the product to fp32 rounding."""
    rows = crow.numel() - 1
    if values.dim() == 1:
        return torch.sparse.mm(torch.sparse_csr_tensor(crow.long(), col.long(), values.double(), (rows, width)),
                               x.double())
    return torch.stack([torch.sparse.mm(torch.sparse_csr_tensor(crow.long(), col.long(), values[:, k].double(),
                                                                (rows, width)), x[:, k].double())
                        for k in range(values.shape[1])], dim=1)


@pytest.mark.skipif(not HAVE_COMPILER, reason="LOUD SKIP: no C++ compiler or ninja here, the native kernel cannot "
                                              "be built (its fallback is tested below)")
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("heads,channels", [(1, 128), (1, 256), (1, 48), (4, 32), (2, 12), (3, 5), (1, 1)])
def test_native_kernel_equals_the_product(index_dtype, heads, channels):
    assert native.load() is not None, f"the native kernel did not build here: {native.why()}"
    rows, width = 300, 257
    crow, col = _csr(rows, width, index_dtype, seed=heads * 1000 + channels)
    gen = torch.Generator().manual_seed(7)
    values = torch.randn(int(crow[-1]), *([heads] if heads > 1 else []), generator=gen)
    x = torch.randn(width, *([heads] if heads > 1 else []), channels, generator=gen)
    got = native.csr_mm(crow, col, values, x, width)
    want = _reference(crow, col, values, x, width)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    empty = (crow[1:] == crow[:-1]).nonzero().flatten()
    assert empty.numel() >= 2 and bool((got[empty] == 0).all())  # empty rows are zeros, not leftovers


@pytest.mark.skipif(not HAVE_COMPILER, reason="LOUD SKIP: no C++ compiler or ninja here")
def test_native_kernel_handles_a_block_with_no_source_rows():
    crow = torch.zeros(4, dtype=torch.int32)
    out = native.csr_mm(crow, torch.zeros(0, dtype=torch.int32), torch.zeros(0), torch.zeros(0, 16), 0)
    assert out.shape == (3, 16) and bool((out == 0).all())


def test_disabled_kernel_falls_back_to_torch(monkeypatch):
    monkeypatch.setenv(native.ENV, "0")
    crow, col = _csr(50, 60, torch.int64, seed=1)
    values, x = torch.rand(int(crow[-1])), torch.rand(60, 8)
    assert native.describe() == f"torch.sparse.mm ({native.ENV}=0)"
    torch.testing.assert_close(native.csr_mm(crow, col, values, x).double(), _reference(crow, col, values, x, 60), rtol=1e-5, atol=1e-5)


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def broken(**kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(cpp, "load", broken)
    crow, col = _csr(40, 30, torch.int32, seed=2)
    values, x = torch.rand(int(crow[-1]), 2), torch.rand(30, 2, 4)
    with pytest.warns(RuntimeWarning, match="Ninja is required.*pip install ninja"):
        got = native.csr_mm(crow, col, values, x)
    torch.testing.assert_close(got.double(), _reference(crow, col, values, x, 30), rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, not per call
        native.csr_mm(crow, col, values, x)
    assert native.describe().startswith("torch.sparse.mm (RuntimeError: Ninja is required")


def test_tensors_that_need_autograd_or_other_dtypes_take_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(native, "load", lambda: calls.append(1) or None)
    crow, col = _csr(20, 20, torch.int64, seed=3)
    x64 = torch.rand(20, 4, dtype=torch.float64)
    out = native.csr_mm(crow, col, torch.rand(int(crow[-1]), dtype=torch.float64), x64)
    assert out.dtype == torch.float64 and not calls  # not even asked: float64 never goes native


def test_autograd_functions_get_the_kernel_and_tracked_products_do_not(monkeypatch):
    """DDP's BlockSpMM calls the kernels inside ``Function.forward`` (grad mode off, inputs requiring grad): those
    run native; a product autograd must track (grad mode on) takes torch.sparse.mm, which has a backward."""
    if native.load() is None:
        pytest.skip(f"LOUD SKIP: native kernel unavailable here ({native.why()})")
    crow, col = _csr(30, 30, torch.int64, seed=4)
    x = torch.rand(30, 8, requires_grad=True)
    values = torch.rand(int(crow[-1]))
    seen = []
    real = native.load()

    class Spy:
        def csr_spmm(self, *args):
            seen.append(1)
            return real.csr_spmm(*args)

    monkeypatch.setattr(native, "load", lambda: Spy())
    with torch.no_grad():
        native.csr_mm(crow, col, values, x)
    assert seen == [1]
    out = native.csr_mm(crow, col, values, x)
    assert seen == [1] and out.requires_grad  # tracked: the fallback, so the gradient flows
    out.sum().backward()
    assert x.grad is not None


def test_a_stale_build_lock_is_removed_with_a_warning_and_a_fresh_one_kept(tmp_path):
    """A build killed part-way leaves torch's lock behind; every later load waited on it silently."""
    lock = tmp_path / "lock"
    lock.write_text("")
    now = lock.stat().st_mtime
    assert not native.clear_stale_lock(tmp_path, now=now + 30)  # a build in progress: kept
    assert lock.exists()
    with pytest.warns(RuntimeWarning, match="removed a stale build lock"):
        assert native.clear_stale_lock(tmp_path, now=now + native.STALE_LOCK_S + 1)
    assert not lock.exists()
    assert not native.clear_stale_lock(tmp_path)  # no lock: nothing to do
