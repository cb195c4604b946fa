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
        ("epoch_index,stage,Stage\n0,W,N1\n", "names the column(s) ['stage'] more than once"),  # which one?
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


@pytest.mark.parametrize(
    "change_s, epoch_1",
    [
        (50.0, "W"),  # 20 s of W, 10 s of N2: the earlier stage has most of the epoch
        (40.0, "N2"),  # 10 s of W, 20 s of N2
        (45.0, "W"),  # an even split goes to the stage the epoch began in
        (30.0, "N2"),  # on the grid: no split at all
    ],
)
def test_a_change_part_way_through_an_epoch_gives_it_the_stage_covering_most_of_it(tmp_path, change_s, epoch_1):
    """AASM scores an epoch by the stage that fills most of it; the later stage used to win always."""
    path = _write(tmp_path, f"start_s,stage\n0,W\n{change_s:g},N2\n")
    assert load_stages(path, "csv", 3) == ["W", epoch_1, "N2"]


def test_several_stages_in_one_epoch_and_time_before_the_first_change(tmp_path):
    # Epoch 0: unscored 0-10 s, then W for 20 s. Epoch 2 (60-90 s): W 5 s, N1 5 s, N2 8 s, R 12 s.
    path = _write(tmp_path, "start_s,stage\n10,W\n65,N1\n70,N2\n78,R\n")
    assert load_stages(path, "csv", 4) == ["W", "W", "R", "R"]
    assert load_stages(_write(tmp_path, "start_s,stage\n20,W\n", "late.stages.csv"), "csv", 2) == [UNSCORED, "W"]


def test_mid_epoch_changes_are_counted_in_validation_not_quarantined(tmp_path):
    on_grid = _write(tmp_path, "start_s,stage\n0,W\n30.0000001,N1\n60,N2\n90,N2\n", "a.stages.csv")
    assert check_stage_table(read_stage_table(on_grid), on_grid, "a", 4, 120.0) == []
    off_grid = _write(tmp_path, "start_s,stage\n0,W\n50,N1\n70,N2\n100,N2\n", "b.stages.csv")
    (note,) = check_stage_table(read_stage_table(off_grid), off_grid, "b", 4, 120.0)
    assert (note.code, note.severity) == ("annotation_notes", "warning")
    assert note.message.startswith("2 epoch(s) hold a stage change part-way through (first: epoch 1 at 0:00:30")
    assert "scored W" in note.message and (note.start_s, note.end_s) == (30.0, 60.0)
    assert load_stages(off_grid, "csv", 4) == ["W", "W", "N2", "N2"]  # the same change at 100 s is no split
