"""An EDF start that passes the dd.mm.yy / hh.mm.ss pattern (and pyedflib) but is no real date or time
(31.02.20) is refused, naming the field: read as "no start" it silently turned off every check that
needs the start (the RML's start against the EDF's, the parts' continuity)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from sleepsound.core.config import PreprocessConfig
from sleepsound.ingest.manifest import build_manifest
from sleepsound.io.edf_header import EdfHeaderError, read_edf_header
from sleepsound.synth.faults import part_path, rml_path
from sleepsound.synth.writers import generate_cohort


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edf")
    generate_cohort(out, n_subjects=1, hours=0.05, seed=5, sample_rate=16_000, part_seconds=90, cycle_minutes=3)
    return out


def _with(night: Path, tmp_path: Path, offset: int, value: bytes) -> tuple[Path, str, Path]:
    cohort = tmp_path / "cohort"
    shutil.copytree(night, cohort)
    patient = next((cohort / "APNEA_EDF").iterdir()).name
    path = part_path(cohort, patient, 1)
    data = bytearray(path.read_bytes())
    data[offset : offset + 8] = value
    path.write_bytes(bytes(data))
    return cohort, patient, path


@pytest.mark.parametrize(
    "offset, value, field",
    [(168, b"31.02.20", "start date"), (168, b"00.13.20", "start date"), (176, b"24.00.00", "start time")],
)
def test_a_start_that_is_no_real_date_or_time_names_the_field(night, tmp_path, offset, value, field):
    _, _, path = _with(night, tmp_path, offset, value)
    with pytest.raises(EdfHeaderError) as info:
        read_edf_header(str(path))
    assert info.value.code == "inconsistent_edf_header"
    assert f"'{field}' is '{value.decode()}'" in info.value.message


def test_the_night_is_quarantined_not_left_unchecked_against_its_rml(night, tmp_path):
    cohort, patient, path = _with(night, tmp_path, 168, b"31.02.20")
    rml = rml_path(cohort, patient)  # the RML of a night recorded a year earlier: with no start, unseen
    rml.write_text(re.sub(r"<RecordingStart>\d{4}", "<RecordingStart>2001", rml.read_text(), count=1))
    (row,) = build_manifest(str(cohort), PreprocessConfig())
    assert row["reason_code"] == "inconsistent_edf_header", row["findings"]
    assert row["findings"][0]["path"] == str(path) and "'31.02.20'" in row["reason"]


def test_a_real_start_still_reads(night):
    path = next((night / "APNEA_EDF").rglob("*[[]001[]].edf"))
    assert read_edf_header(str(path)).start is not None
