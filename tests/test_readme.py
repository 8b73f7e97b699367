"""The README's Usage section runs as written: every ```bash block, in order, in one empty folder, with this
environment's `nextstep-trt` first on PATH. A block that exits non-zero fails the test with its output."""
from __future__ import annotations

import pytest
import os
import re
import subprocess
import sys
import time
from pathlib import Path

pytestmark = pytest.mark.slow(seconds=220)      # idle seconds, roughly: scheduled first (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
BLOCK_TIMEOUT = 900   # seconds; a block this slow is a bug in itself


def usage_blocks(text: str) -> list[str]:
    """The bash blocks between '## Usage' and the next '## ' heading."""
    start = text.index("\n## Usage\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def test_usage_section_has_the_commands_a_user_runs():
    blocks = usage_blocks((ROOT / "README.md").read_text())
    joined = "\n".join(blocks)
    for command in ("init-tiny", "generate", "edit", "export", "inspect", "verify", "record", "quantize", "doctor",
                    "build", "serve", "client", "triton-repo", "bench", "floor"):
        assert f"nextstep-trt {command} " in joined, f"the Usage section never runs `nextstep-trt {command}`"


def test_every_usage_block_runs_verbatim(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONUNBUFFERED="1")
    times = []
    for i, block in enumerate(usage_blocks((ROOT / "README.md").read_text()), 1):
        start = time.perf_counter()
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=BLOCK_TIMEOUT)
        times.append(time.perf_counter() - start)
        first = block.strip().splitlines()[0]
        assert proc.returncode == 0, (f"README Usage block {i} ({first} ...) exited {proc.returncode}:\n{block}\n"
                                      f"--- output (last 4000 chars) ---\n{proc.stdout[-4000:]}")
        print(f"README block {i}: {times[-1]:.1f} s  {first}")
