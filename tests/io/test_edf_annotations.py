"""An EDF+ part whose annotation signal is packed with annotations is read in memory that does not
grow with them: pyedflib read every annotation at open by default (about 80x the file's size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

RATE, RECORD_S = 16_000, 3


def _field(value: object, width: int) -> bytes:
    return str(value).ljust(width).encode("ascii")


def write_annotated_edf(path: Path, n_records: int, annotation_samples: int) -> None:
    """EDF+C: a 16-kHz Mic signal and an ``EDF Annotations`` signal filled with minimal annotations."""
    spr = [RATE * RECORD_S, annotation_samples]
    head = _field(0, 8) + _field("X X X X", 80) + _field("Startdate 01-JAN-2020 X X X", 80)
    head += _field("01.01.20", 8) + _field("22.00.00", 8) + _field(256 * 3, 8) + _field("EDF+C", 44)
    head += _field(n_records, 8) + _field(RECORD_S, 8) + _field(2, 4)
    columns = (
        (("Mic", "EDF Annotations"), 16),
        (("", ""), 80),
        (("uV", ""), 8),
        ((-32768, -1), 8),
        ((32767, 1), 8),
        ((-32768, -32768), 8),
        ((32767, 32767), 8),
        (("", ""), 80),
        (spr, 8),
        (("", ""), 32),
    )
    for values, width in columns:
        head += b"".join(_field(v, width) for v in values)
    rng = np.random.default_rng(0)
    with open(path, "wb") as out:
        out.write(head)
        for r in range(n_records):
            out.write(rng.integers(-40, 40, size=spr[0], dtype=np.int16).tobytes())
            stamp = f"+{r * RECORD_S}\x14\x14\x00".encode()
            note = f"+{r * RECORD_S}\x14a\x14\x00".encode()
            blob = stamp + note * ((2 * annotation_samples - len(stamp)) // len(note))
            out.write(blob.ljust(2 * annotation_samples, b"\x00"))


_PROBE = """
import sys
from sleepsound.io.audio import iter_part_blocks, probe_edf

def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024

before = hwm()
part = probe_edf(sys.argv[1], "Mic")
n = sum(len(b) for b in iter_part_blocks(part, 30 * 16000, "psg-audio"))
print(n, part.n_samples, hwm() - before)
"""


def test_an_edf_packed_with_annotations_is_read_without_them(tmp_path: Path) -> None:
    path = tmp_path / "00000001-100001[001].edf"
    write_annotated_edf(path, n_records=10, annotation_samples=150_000)  # 30 s of audio, ~3 MB of annotations
    size_mb = path.stat().st_size / 2**20
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    read, declared, grew_mb = (int(v) for v in out.stdout.split())
    assert read == declared == 10 * RECORD_S * RATE
    assert grew_mb < 40, f"{grew_mb} MB more to read a {size_mb:.1f} MB part"  # with annotations: ~250 MB
