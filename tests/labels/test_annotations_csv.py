"""Plain nights' stage CSVs as spreadsheets and scoring programs export them: encodings,
separators, header spellings and stage names, accepted or refused by name."""

from pathlib import Path

import pytest

from sleepsound.ingest.label_checks import check_stage_table
from sleepsound.labels.annotations import AnnotationError, load_stages, read_stage_table
from sleepsound.labels.vocabulary import STAGE_SPELLINGS, STAGES_5, UNSCORED, stage5_of

FIVE = "epoch_index,stage\n0,W\n1,N1\n2,N2\n3,N3\n4,R\n"


def _write(tmp_path: Path, data: str | bytes, name: str = "n.stages.csv") -> str:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


@pytest.mark.parametrize(
    "data",
    [
        FIVE,
        b"\xef\xbb\xbf" + FIVE.encode(),  # UTF-8 with a BOM
        FIVE.replace("\n", "\r\n"),  # Windows line ends
        FIVE.replace(",", ";"),  # European Excel
        FIVE.replace(",", "\t").encode("utf-16"),  # Excel "Unicode text"
        "Epoch_Index , Stage\n0, W\n1 ,N1\n\n2,N2 \n3,N3\n4,R",  # spacing, case, blank line, no last newline
        "epoch_index,stage,notes\n0,W,\xe9veil\n1,N1,\n2,N2,\n3,N3,\n4,R,\n".encode("latin-1"),  # a Latin-1 note
        "epoch_index,stage\n0.0,W\n1.0,N1\n2.0,N2\n3.0,N3\n4.0,R\n",  # whole numbers written as floats
        "start_s;stage\n0,0;W\n30,0;N1\n60,0;N2\n90,0;N3\n120;R\n",  # decimal commas with semicolons
        "sep=;\n" + FIVE.replace(",", ";"),  # Excel's separator line
        "# scored by RB, 2026-11-02\n" + FIVE + "# end\n",  # comment lines
    ],
    ids=[
        "plain",
        "bom",
        "crlf",
        "semicolon",
        "utf16-tabs",
        "spacing",
        "latin1",
        "float-index",
        "decimal-comma",
        "sep-line",
        "comments",
    ],
)
def test_common_exports_read_the_same(tmp_path, data):
    assert load_stages(_write(tmp_path, data), "csv", 5) == list(STAGES_5)


@pytest.mark.parametrize(
    "names",
    [
        ["w", "n1", "n2", "n3", "r"],
        ["Wake", "NonREM1", "NonREM2", "NonREM3", "REM"],  # the RML's names
        ["W", "S1", "S2", "S3", "REM"],  # R&K
        ["Awake", "N1", "N2", "S4", "R"],  # R&K stage 4 is N3, as NonREM4 is
        ["Stage W", "Stage 1", "Stage 2", "Stage 4", "Stage R"],
        ["Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage 3", "Sleep stage R"],  # Sleep-EDF
    ],
)
def test_stage_spellings_map_to_the_five_classes(tmp_path, names):
    data = "epoch_index,stage\n" + "".join(f"{i},{name}\n" for i, name in enumerate(names))
    assert load_stages(_write(tmp_path, data), "csv", 5) == list(STAGES_5)


def test_not_scored_spellings_and_blank_cells_are_unscored(tmp_path):
    data = "epoch_index,stage\n0,W\n1,?\n2,unscored\n3,Movement time\n4,MT\n5,NotScored\n6,\n7,N2\n"
    assert load_stages(_write(tmp_path, data), "csv", 8) == ["W", *[UNSCORED] * 6, "N2"]


def test_every_spelling_maps_to_a_known_stage():
    assert set(STAGE_SPELLINGS.values()) == {*STAGES_5, UNSCORED}
    assert all(stage5_of(key) == stage for key, stage in STAGE_SPELLINGS.items())


@pytest.mark.parametrize(
    "data, fragment",
    [
        ("epoch_index,stage\n0,0\n1,1\n2,4\n", "unknown stage names ['0', '1', '4']"),  # numbers: REM is 4 or 5
        ("epoch_index,stage\n0,W\n1,A\n", "unknown stage names ['A']"),  # artefact or arousal?
        ("epoch_index,stage\n0,W\n1.5,N1\n", "whole numbers (row 3: 1.5)"),
        ("epoch_index,stage\n0,W\ninf,N1\n", "whole numbers (row 3: inf)"),  # was int(inf) later: validator_failed
        ("epoch_index,stage\n0,W\n-inf,N1\n", "whole numbers (row 3: -inf)"),
        ("epoch_index,stage\n0,W\n1e400,N1\n", "whole numbers (row 3: 1e400)"),  # beyond a float: inf
        ("start_s,stage\n0,W\n00:00:30,N1\n", "row 3: '00:00:30'"),
        ("", "empty (0 bytes)"),
        (b"\x00\x01\x02" * 50, "not text"),
    ],
)
def test_what_cannot_be_meant_is_refused_by_name(tmp_path, data, fragment):
    with pytest.raises(AnnotationError) as info:
        read_stage_table(_write(tmp_path, data))
    assert info.value.code == "bad_annotations" and fragment in info.value.message
    assert "n.stages.csv" in str(info.value)


def test_a_header_without_rows_is_a_night_without_staging(tmp_path):
    path = _write(tmp_path, "epoch_index,stage\n")
    (finding,) = check_stage_table(read_stage_table(path), path, "n", 5, 150.0)
    assert (finding.code, finding.severity) == ("no_staging", "warning")
    assert load_stages(path, "csv", 3) == [UNSCORED] * 3


def test_a_start_s_that_disagrees_with_epoch_index_is_noted(tmp_path):
    agree = _write(tmp_path, "epoch_index,start_s,stage\n0,0,W\n1,30,N1\n2,60,N2\n", "a.stages.csv")
    assert check_stage_table(read_stage_table(agree), agree, "a", 3, 90.0) == []
    shifted = _write(tmp_path, "epoch_index,start_s,stage\n0,0,W\n1,60,N1\n2,90,N2\n", "b.stages.csv")
    (note,) = check_stage_table(read_stage_table(shifted), shifted, "b", 3, 90.0)
    assert (note.code, note.severity) == ("annotation_notes", "warning")
    assert "2 row(s)" in note.message and "row 3, epoch 1 at start_s 60" in note.message
