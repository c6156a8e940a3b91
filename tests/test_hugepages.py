"""runtime.hugepages: which mappings are asked onto 2 MiB pages (a /proc/self/smaps text parsed by value), and a live
call that changes no byte of the memory it moves (whether the kernel collapses is the machine's; the report adds up
either way)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from runtime.hugepages import HUGE, anonymous_mappings, collapse_to_huge_pages

MB = 1 << 20


def _block(lo: int, hi: int, perms: str, inode: str, path: str, rss_kb: int) -> str:
    return (f"{lo:x}-{hi:x} {perms} 00000000 00:00 {inode} {path}\nSize: {(hi - lo) // 1024} kB\n"
            f"Rss: {rss_kb} kB\nAnonHugePages: 0 kB\n")


def test_only_large_resident_private_anonymous_mappings_in_whole_huge_pages():
    base = 0x7F0000000000
    text = "".join([
        _block(base + 1000, base + 1000 + 16 * MB, "rw-p", "0", "", 16 * 1024),  # weights: kept, aligned inward
        _block(base + 64 * MB, base + 96 * MB, "rw-p", "0", "[heap]", 30 * 1024),  # the heap, 94 % resident: kept
        _block(base + 128 * MB, base + 192 * MB, "rw-p", "0", "", 1024),  # sparse (a reserved arena): skipped
        _block(base + 256 * MB, base + 288 * MB, "r--p", "0", "", 32 * 1024),  # read-only: skipped
        _block(base + 320 * MB, base + 352 * MB, "rw-s", "0", "", 32 * 1024),  # shared: skipped
        _block(base + 384 * MB, base + 416 * MB, "rw-p", "1234", "/lib/x.so", 32 * 1024),  # a file: skipped
        _block(base + 448 * MB, base + 450 * MB, "rw-p", "0", "", 2048),  # under 4 MiB: skipped
        _block(base + 512 * MB + 4096, base + 512 * MB + 4 * MB + 4096, "rw-p", "0", "[stack]", 4096),  # stack
    ])
    spans = anonymous_mappings(text)
    assert spans == [(base + 2 * MB, base + 16 * MB), (base + 64 * MB, base + 96 * MB)]
    assert all(s % HUGE == 0 and e % HUGE == 0 for s, e in spans)
    assert anonymous_mappings(text, min_resident=0.0)[2] == (base + 128 * MB, base + 192 * MB)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are asked for on Linux only")
def test_a_live_collapse_changes_no_byte_and_accounts_for_every_mapping():
    a = np.random.default_rng(0).standard_normal(6 * MB // 8)  # 6 MiB of float64, written: resident
    before = a.copy()
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        spans = anonymous_mappings(f.read())
    rep = collapse_to_huge_pages()
    assert rep.skipped is None
    assert rep.mappings >= 1 and rep.collapsed + rep.failed > 0
    assert rep.failed == 0 or rep.errors  # a failure always says why
    assert abs(rep.collapsed + rep.failed - sum(e - s for s, e in spans)) <= 64 * MB  # spans move between the reads
    np.testing.assert_array_equal(a, before)
    assert set(rep.as_dict()) == {"collapsed_mb", "failed_mb", "mappings", "errors", "skipped"}
