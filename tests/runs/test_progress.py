"""Progress from a task to the command line's bars: reports throttled, sent to a real Prefect API as
progress artifacts, read back over HTTP and drawn as rich bars."""

import io
from datetime import UTC, datetime, timedelta

from rich.console import Console

from sleepsound.core.progress import throttled
from sleepsound.runs.progress_view import bars, describe, draw, parse, progress_key, read_progress


def test_throttled_passes_each_stages_first_and_last_and_at_most_one_a_second() -> None:
    now = [0.0]
    heard: list[tuple[str, int]] = []
    report = throttled(lambda stage, done, total, unit: heard.append((stage, done)), every_s=1.0, clock=lambda: now[0])
    for done in range(10):  # ten reports within 0.9 s: the first passes
        now[0] = done * 0.1
        report("embed", done, 20, "epochs")
    report("validate", 0, 3, "recordings")  # another stage has its own clock
    now[0] = 1.05
    report("embed", 11, 20, "epochs")
    now[0] = 1.1
    report("embed", 20, 20, "epochs")  # the last always passes
    assert heard == [("embed", 0), ("validate", 0), ("embed", 11), ("embed", 20)]


def test_keys_and_descriptions_round_trip_without_names() -> None:
    assert progress_key("score-20261205T010203Z", "train stage3") == "progress-score-20261205t010203z-train-stage3"
    assert progress_key("Night_1/../x", "embed") == "progress-night-1-x-embed"
    text = describe("train stage3", 3, 8, "epochs")
    assert parse(text) == {"stage": "train stage3", "done": 3, "total": 8, "unit": "epochs"}
    assert parse("embed: <recording 0042> done") is None and parse(None) is None


def test_task_reports_reach_the_bars_through_the_prefect_api(prefect_api: str) -> None:
    from prefect import flow

    from tasks.progress import run_progress

    @flow(name="progress-test")
    def reporting() -> None:
        report = run_progress({"run_id": "progress-test-run", "path": "unused", "acquired": "now"})
        report("validate", 0, 3, "recordings")
        report("validate", 3, 3, "recordings")  # the last of a stage always goes through
        report("embed", 0, 120, "epochs")
        report("embed", 40, 120, "epochs")  # within the second: held back

    before = datetime.now(UTC)
    reporting()
    stages = read_progress(prefect_api, "progress-test-run", before)
    assert stages == [
        {"stage": "validate", "done": 3, "total": 3, "unit": "recordings"},
        {"stage": "embed", "done": 0, "total": 120, "unit": "epochs"},
    ]
    assert read_progress(prefect_api, "progress-test-run", before + timedelta(minutes=5)) == []  # an earlier attempt's
    assert read_progress(prefect_api, "another-run", before) == []

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with bars(console) as progress:
        draw(progress, stages, {})
    text = out.getvalue()
    assert "validate" in text and "3/3" in text and "embed" in text and "0/120" in text


def test_no_bars_when_the_console_is_not_a_terminal(prefect_api: str) -> None:
    from sleepsound.runs.progress_view import progress_bars

    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    with progress_bars(console, prefect_api, "progress-test-run"):
        console.print("working")
    assert out.getvalue() == "working\n"
