"""Huge pages as the bench and doctor report them (core.resources.huge_pages), and the claim behind doctor's hint:
with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 a big allocation lands on transparent huge pages."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nextstep_trt.bench.machine import describe_machine
from nextstep_trt.core.resources import THP_ENABLED, huge_pages
from nextstep_trt.engines.doctor import doctor_report, format_report


def test_thp_mode_and_tunable_are_parsed(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert huge_pages(str(f), env) == {"thp": "madvise", "malloc_hugetlb": "1"}
    f.write_text("[always] madvise never\n")
    assert huge_pages(str(f), {}) == {"thp": "always", "malloc_hugetlb": "unset"}
    assert huge_pages(str(tmp_path / "missing"), {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == \
        {"thp": "unavailable", "malloc_hugetlb": "0"}


def test_bench_machine_and_doctor_show_them():
    hp = huge_pages()
    assert describe_machine().huge_pages == hp
    assert f"huge pages: THP {hp['thp']}, malloc hugetlb {hp['malloc_hugetlb']}" in describe_machine().describe()
    assert f"THP {hp['thp']}; glibc.malloc.hugetlb {hp['malloc_hugetlb']}" in format_report(doctor_report())


# 64 MiB from malloc, written (as ONNX Runtime's C++ allocations; numpy asks for huge pages on its own already)
PROBE = ("import ctypes; libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p; "
         "p = libc.malloc(64 << 20); ctypes.memset(p, 1, 64 << 20); "
         "print([l.split()[1] for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages')][0])")


def test_the_tunable_puts_a_big_allocation_on_huge_pages():
    """What doctor's hint promises, checked on this machine: 64 MiB malloc'd in a child process with and without
    the tunable (needs THP in madvise mode and /proc/self/smaps_rollup)."""
    if huge_pages()["thp"] != "madvise" or not os.path.exists("/proc/self/smaps_rollup"):
        pytest.skip(f"THP mode {huge_pages()['thp']} ({THP_ENABLED}): the tunable's effect is not observable here")
    kb = {}
    for tunable in ("", "glibc.malloc.hugetlb=1"):
        env = {**os.environ, "GLIBC_TUNABLES": tunable}
        out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
        kb[tunable] = int(out.stdout.strip())
    assert kb[""] == 0 and kb["glibc.malloc.hugetlb=1"] >= 32 * 1024, kb
