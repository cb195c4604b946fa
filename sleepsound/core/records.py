"""The records that cross from one stage (or one Prefect task) to the next, typed.

Stages hand each other small dicts rather than arrays: a manifest row, the facts of the
trained or serving heads, the counts a task returns, a flow's summary. They stay plain
dicts at run time (Prefect and Ray move them between processes as they are, and they are
written as JSON), and these ``TypedDict`` declarations say what each one holds, so a reader
(and a type checker) need not trace the code that builds it. Parquet artifacts have their
schemas in ``core.schemas``; ``ManifestRow`` is the Python side of ``schemas.MANIFEST``.

A note on names: a *target* is what a head predicts (``stage3``, ``stage5``, ``resp``,
see ``labels.targets``); a *task* is a Prefect task. Keys written into model files and
metrics before that distinction (``"task"``, ``"tasks"``, ``"skipped_tasks"``) keep their
names so existing storage roots stay readable; in them "task" means target.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class FindingRecord(TypedDict):
    """One validation finding as stored in the manifest (``core.findings.Finding`` as a dict)."""

    level: str  # "recording" or "epoch"
    code: str
    severity: str  # "error" quarantines the night, "warning" does not
    path: str
    message: str
    start_s: float | None
    end_s: float | None


class FileVersion(TypedDict):
    """One of a night's files as validation listed it (``sleepsound.ingest.versions``)."""

    uri: str
    size: int
    version: str | None  # an object's ETag; a local file's modification time;ctime;inode (ingest.versions)


class ManifestRow(TypedDict):
    """One recording of a source: where its files are, what they hold, accepted or quarantined and why."""

    recording_id: str
    subject_id: str
    layout: str  # "psg-audio" or "plain"
    source_uris: list[str]  # the audio parts, in time order
    n_parts: int
    bytes: int
    sha256: str | None  # of every part, in order: the embedding cache's key
    duration_s: float | None
    sample_rate: float | None
    channels: list[str]
    label_source: str  # "rml", "csv" or "none"
    labels_uri: str | None
    events_uri: str | None
    n_epochs: int
    status: str  # "accepted" or "quarantined"
    reason_code: str | None
    reason: str | None
    findings: list[FindingRecord]
    source_stamp: str | None  # files' sizes and versions + settings: unchanged -> row reused
    labels_sha256: NotRequired[str | None]  # stage and event files as validated (absent in older manifests)
    file_versions: NotRequired[list[FileVersion] | None]  # every file read, as listed when validated


class HeadInfo(TypedDict, total=False):
    """Where one target's head lives and what it was trained on (never its weights)."""

    task: str  # the target: stage3, stage5 or resp (stored key name)
    model_dir: str
    version: str
    train_epochs: int
    train_shifted: int
    class_counts: list[int] | None
    events_per_event_epoch: float  # resp only: how a predicted label becomes an event count
    snore_share_per_snore_epoch: float


class TrainedModels(TypedDict):
    """The heads a run predicts with (just trained, or the serving champions) and the subject split.

    The stage3 head's facts sit at the top level as well, since every report leads with it.
    """

    model_dir: str
    version: str
    task: str  # always the primary target, stage3
    train_subjects: list[str]
    val_subjects: list[str]
    test_subjects: list[str]
    heads: dict[str, HeadInfo]  # target -> its head
    skipped: dict[str, str]  # target -> why no head was trained


class Ingested(TypedDict):
    """What the ingest task returns: where the manifest is, and counts (discovered = accepted + quarantined)."""

    manifest: str
    discovered: int
    accepted: int
    quarantined: int
    unchanged: int


class Embedded(TypedDict):
    """What the embed task returns: recordings embedded, from cache and failed, and rows embedded;
    and the manifest's counts once it quarantined what failed or had no valid epoch."""

    embedded: int
    cached: int
    failed: int
    accepted: int
    quarantined: int
    epochs: int
    shifted: int
    cache: list[str]
    cache_files_quarantined: int  # bad cache files moved to <root>/quarantine/cache and embedded again


class Predicted(TypedDict):
    """What the predict task returns: where the predictions are, and the manifest's counts."""

    predictions: str
    events: str  # runs/<run-id>/events: one breathing-event table per night
    accepted: int
    quarantined: int


class Reported(TypedDict):
    """What the report task returns: the report's and summaries' URIs, and the headline metrics."""

    report: str
    summaries: str
    metrics: dict[str, Any]


class ScoredVersion(TypedDict):
    version: str | None
    score: float | None


class LeftOut(TypedDict):
    """Evaluation nights a promotion was decided without, and why (``registry.promotion``)."""

    nights: int
    of: int  # the evaluation nights there were
    reason: str  # the reason codes, comma-separated: source_changed, read_error


class PromotionDecision(TypedDict):
    """One target's champion/challenger decision, with both scores (also appended to promotions.json)."""

    task: str  # the target (stored key name)
    metric: str
    margin: float
    promoted: bool
    reason: str
    challenger: ScoredVersion
    champion: ScoredVersion
    decided: str  # ISO time
    left_out: NotRequired[LeftOut]  # present when evaluation nights were left out of the comparison


class FlowSummary(TypedDict, total=False):
    """What a flow returns and records in ``runs/<run-id>/run.json``: the CLI prints it."""

    run_id: str
    prefect_flow_run: dict[str, str]
    seconds: dict[str, float]  # per step
    counts: dict[str, Any]  # Ingested and Embedded counts, and the manifest's
    model: TrainedModels
    promotions: dict[str, PromotionDecision]
    metrics: dict[str, Any]
    report: str | None
    predictions: str | None
    summaries: str | None
    run_record: str
    new: dict[str, list[str]]  # nightly only: new nights, labelled and unlabelled
    trained: bool  # nightly only


class RootHold(TypedDict):
    """A run's hold on its storage root, as the flow hands it to its tasks: they write only while
    the lock is still this (``runs.root_lock.follow_hold``)."""

    run_id: str
    path: str  # the lock file
    acquired: str
