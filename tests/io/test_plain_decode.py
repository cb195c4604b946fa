"""A plain file is decoded in reads of bounded size whatever its rate and channel count: one 30-s
block of 8 channels at a high rate decoded every channel at once (630 MB a block at 655 kHz)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

_PROBE = """
import sys
from sleepsound.io.audio import iter_part_blocks, probe_plain

def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024

before = hwm()
part = probe_plain(sys.argv[1], "Mic")
n = 0
for block in iter_part_blocks(part, int(30 * part.sample_rate), "plain", 1000):
    n += len(block)
    del block
print(n, part.n_samples, hwm() - before)
"""


def test_a_high_rate_many_channel_file_is_read_one_channel_block_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "wide.flac"
    rate, channels, seconds = 192_000, 8, 40
    with sf.SoundFile(path, "w", rate, channels, format="FLAC", subtype="PCM_16") as out:
        tone = (0.01 * np.sin(np.arange(rate) / 10)).astype(np.float32)
        for _ in range(seconds):
            out.write(np.repeat(tone[:, None], channels, axis=1))
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    read, declared, grew_mb = (int(v) for v in out.stdout.split())
    assert read == declared - 1000
    # one 30-s block of the chosen channel is 22 MB; all 8 channels of it were 176 MB
    assert grew_mb < 80, f"{grew_mb} MB to read {seconds} s of {channels} channels at {rate} Hz"
