"""Tier storage: the same reads, writes and scatter-adds on every tier, exact byte counters per link and tier,
and disk files that disappear at the end, on errors and on Ctrl-C."""

from __future__ import annotations

import pytest
import torch

from flexgnn_core.engine.diskfile import aligned
from flexgnn_core.engine.tiers import TierStore

CPU = torch.device("cpu")


@pytest.mark.parametrize("tier", ["device", "host", "disk"])
def test_rows_read_write_and_scatter_add_like_a_plain_tensor(tier, tmp_path):
    reference = torch.zeros(10, 3)
    rows = torch.arange(12, dtype=torch.float32).view(4, 3)
    index = torch.tensor([7, 1, 4])
    with TierStore(CPU, str(tmp_path)) as store:
        buffer = store.alloc("x", (10, 3), tier)
        buffer.write(slice(2, 6), rows)
        reference[2:6] = rows
        buffer.add(index, rows[:3])
        reference.index_add_(0, index, rows[:3])
        buffer.add(slice(0, 2), rows[:2])
        reference[0:2] += rows[:2]
        torch.testing.assert_close(buffer.read(slice(0, 10)), reference, rtol=0, atol=0)
        torch.testing.assert_close(buffer.read(index), reference[index], rtol=0, atol=0)
        if tier != "device":  # a read of an off-device tier is a copy: later changes to the stored rows (and to
            # the read) leave the other alone, for ranges and for index gathers
            ranged, gathered = buffer.read(slice(0, 10)), buffer.read(index)
            buffer.write(slice(0, 10), torch.full((10, 3), -7.0))
            torch.testing.assert_close(ranged, reference, rtol=0, atol=0)
            torch.testing.assert_close(gathered, reference[index], rtol=0, atol=0)
            ranged += 1
            torch.testing.assert_close(buffer.read(slice(0, 10)), torch.full((10, 3), -7.0), rtol=0, atol=0)


def test_link_counters_count_exact_bytes(tmp_path):
    """h2d / d2h count the rows; the disk links count the whole blocks the file's system calls moved."""
    with TierStore(CPU, str(tmp_path)) as store:
        host, disk, device = (store.alloc(name, (8, 4), name) for name in ("host", "disk", "device"))
        row_bytes, block = 4 * 4, 4096  # the disk buffer's 128 bytes sit in one block
        host.write(slice(0, 2), torch.ones(2, 4))  # d2h 2 rows
        host.read(torch.tensor([0, 5, 6]))  # h2d 3 rows
        disk.write(slice(0, 8), torch.ones(8, 4))  # d2h 8 rows; the block covered in part: read, then written
        disk.read(slice(1, 3))  # h2d 2 rows; the block read
        disk.add(torch.tensor([3]), torch.ones(1, 4))  # d2h 1 row; the block read and written
        device.write(slice(0, 8), torch.ones(8, 4))
        device.read(torch.tensor([1, 2]))  # nothing crosses a link
        links = store.counters.links
        assert links == {"h2d": 5 * row_bytes, "d2h": 11 * row_bytes, "disk_read": 3 * block,
                         "disk_write": 2 * block}
        assert store.disk_actual() == {"read": 3 * block, "write": 2 * block}


def test_tier_bytes_and_peaks_are_accounted(tmp_path):
    with TierStore(CPU, str(tmp_path)) as store:
        a = store.alloc("a", (100, 10), "device")
        store.alloc("b", (50, 10), "host")
        held = store.track(torch.empty(25, 10))
        assert store.counters.current == {"device": 5000, "host": 2000, "disk": 0}
        store.untrack(held)
        a.free()
        store.alloc("c", (10, 10), "device")
        assert store.counters.current["device"] == 400
        assert store.counters.peak == {"device": 5000, "host": 2000, "disk": 0}


def test_disk_files_live_in_a_private_dir_removed_at_close(tmp_path):
    store = TierStore(CPU, str(tmp_path))
    store.alloc("h1", (1000, 16), "disk")
    files = [f for f in store.workdir.iterdir() if f.name != ".owner.json"]  # the owner file names this process
    assert [f.name for f in files] == ["h1.f32"]
    assert files[0].stat().st_size == aligned(1000 * 16 * 4)  # whole 4 KiB blocks, reserved up front
    assert store.workdir.parent == tmp_path
    store.close()
    assert list(tmp_path.iterdir()) == []
    store.close()  # closing twice is harmless


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_disk_files_removed_on_error_and_ctrl_c(tmp_path, error):
    with pytest.raises(error):
        with TierStore(CPU, str(tmp_path)) as store:
            store.alloc("grad_h1", (100, 8), "disk").write(slice(0, 100), torch.ones(100, 8))
            assert list(tmp_path.iterdir())
            raise error()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_disk_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    store = TierStore(CPU, str(blocker / "spill"))
    with pytest.raises(OSError, match="disk_dir=.*is not writable.*set disk_dir to a writable directory"):
        store.alloc("h1", (10, 4), "disk")
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_full_disk_is_a_clear_error_and_cleans_up(tmp_path):
    store = TierStore(CPU, str(tmp_path))
    store.alloc("small", (4, 4), "disk")
    with pytest.raises(OSError, match=r"hardware.disk_dir: cannot reserve \d+ bytes for huge "
                                      r"\(16384 column block files huge.c\*.f32\)"):
        store.alloc("huge", (2**40, 2**20), "disk")  # far beyond any file system's free space
    assert store.workdir is None and list(tmp_path.iterdir()) == []


def test_unknown_tier_lists_valid_ones():
    with TierStore(CPU) as store:
        with pytest.raises(ValueError, match="tier 'tape' for 'h1' is unknown; valid: device, host, disk"):
            store.alloc("h1", (4, 4), "tape")
