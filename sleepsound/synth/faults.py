"""Damage a generated cohort the way real cohorts arrive damaged, one named fault at a time.

Each fault edits one recording of a cohort written by ``generate_cohort`` (PSG-Audio or
plain layout) in place and says which finding validation must report. Tests apply every
fault in ``FAULTS`` and check that validation names it; a data team can use the same
functions to rehearse what their pipeline does with a bad upload.

EDF parts are rewritten through pyedflib's high-level reader/writer (physical values,
same signal headers), damaged headers byte by byte (pyedflib would refuse to write them),
RML through sleepsound's own reader/writer, so a fault changes only what it says it changes.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyedflib
import soundfile as sf
from pyedflib import highlevel
from scipy import signal as sps

from sleepsound.io.rml import RmlEvent, format_seconds, parse_rml, write_rml
from sleepsound.labels.vocabulary import EPOCH_SECONDS


@dataclass(frozen=True)
class Fault:
    """A way to damage one recording, and the finding validation must then report."""

    name: str
    layout: str  # "psg-audio" or "plain"
    code: str  # the finding's code
    severity: str  # "error" (quarantined) or "warning" (processed)
    apply: Callable[[Path, str], None]


# ----------------------------------------------------------------------------- file helpers


def part_path(cohort: Path, patient: str, number: int) -> Path:
    return cohort / "APNEA_EDF" / patient / f"{patient}[{number:03d}].edf"


def parts_of(cohort: Path, patient: str) -> list[Path]:
    return sorted((cohort / "APNEA_EDF" / patient).glob("*.edf"))


def rml_path(cohort: Path, patient: str) -> Path:
    return cohort / "APNEA_RML" / f"{patient}.rml"


def rewrite_edf(path: Path, change: Callable[[dict[str, np.ndarray], dict[str, dict], dict], None]) -> None:
    """Read a part (physical values), let ``change`` edit signals/headers/header by label, write it back."""
    signals, headers, header = highlevel.read_edf(str(path))
    by_label = {h["label"]: np.asarray(s, dtype=np.float64) for s, h in zip(signals, headers, strict=True)}
    head_by_label = {h["label"]: dict(h) for h in headers}
    change(by_label, head_by_label, header)
    labels = [h["label"] for h in headers if h["label"] in by_label]
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():  # a fault may drive a signal to its physical limits on purpose
        warnings.simplefilter("ignore", UserWarning)
        highlevel.write_edf(
            str(tmp),
            [by_label[label] for label in labels],
            [head_by_label[label] for label in labels],
            header,
            file_type=pyedflib.FILETYPE_EDFPLUS,
        )
    tmp.replace(path)


def _edit_rml(cohort: Path, patient: str, change: Callable) -> None:
    path = rml_path(cohort, patient)
    ann = parse_rml(path)
    change(ann)
    write_rml(path, ann)


def _part_seconds(path: Path) -> float:
    with pyedflib.EdfReader(str(path)) as reader:
        return float(reader.getFileDuration())


def _set_mic(path: Path, edit: Callable[[np.ndarray, float], np.ndarray]) -> None:
    def change(signals: dict, headers: dict, header: dict) -> None:
        signals["Mic"] = edit(signals["Mic"], float(headers["Mic"]["sample_frequency"]))

    rewrite_edf(path, change)


# ----------------------------------------------------------------------------- PSG-Audio faults


def empty_part(cohort: Path, patient: str) -> None:
    part_path(cohort, patient, 1).write_bytes(b"")


def not_edf(cohort: Path, patient: str) -> None:
    part_path(cohort, patient, 2).write_bytes(b"RIFF....WAVEfmt this is a WAV header, not EDF" * 20)


def corrupt_header(cohort: Path, patient: str) -> None:
    path = part_path(cohort, patient, 1)
    data = bytearray(path.read_bytes())
    data[252:256] = b"x5  "  # 'number of signals' is no longer a number
    path.write_bytes(bytes(data))


def header_claims_fewer_records(cohort: Path, patient: str) -> None:
    path = part_path(cohort, patient, 1)
    data = bytearray(path.read_bytes())
    records = int(data[236:244].decode())
    data[236:244] = f"{records - 2:<8d}".encode()  # the file now holds more than its header says
    path.write_bytes(bytes(data))


# Widths of the per-signal header fields, in file order (EDF spec): field k of signal i sits at
# 256 + ns * (sum of the widths before k) + i * width.
SIGNAL_FIELD_WIDTHS: dict[str, int] = {
    "label": 16,
    "transducer": 80,
    "dimension": 8,
    "physical_min": 8,
    "physical_max": 8,
    "digital_min": 8,
    "digital_max": 8,
    "prefilter": 80,
    "samples_per_record": 8,
    "reserved": 32,
}


def signal_header_fields(path: Path, label: str) -> dict[str, str]:
    """The header fields of the signal called ``label``, as the ASCII text in the file."""
    data = path.read_bytes()
    ns = int(data[252:256])
    labels = [data[256 + 16 * i : 256 + 16 * (i + 1)].decode("ascii").strip() for i in range(ns)]
    index, offset, fields = labels.index(label), 256, {}
    for name, width in SIGNAL_FIELD_WIDTHS.items():
        fields[name] = data[offset + index * width : offset + (index + 1) * width].decode("ascii").strip()
        offset += ns * width
    return fields


def edit_signal_header(path: Path, signal: str, **values: str) -> None:
    """Overwrite header fields of the signal called ``signal`` in place (left-aligned ASCII, as an exporter
    writes them), the way a damaged export arrives: pyedflib's writer would refuse to write most of these."""
    data = bytearray(path.read_bytes())
    ns = int(data[252:256])
    labels = [bytes(data[256 + 16 * i : 256 + 16 * (i + 1)]).decode("ascii").strip() for i in range(ns)]
    index, offset = labels.index(signal), 256
    for name, width in SIGNAL_FIELD_WIDTHS.items():
        if name in values:
            data[offset + index * width : offset + (index + 1) * width] = values[name].ljust(width).encode("ascii")
        offset += ns * width
    path.write_bytes(bytes(data))


def start_date_with_colons(cohort: Path, patient: str) -> None:
    """'dd:mm:yy' instead of 'dd.mm.yy': pyedflib refuses the file; validation must say which field."""
    path = part_path(cohort, patient, 1)
    data = bytearray(path.read_bytes())
    data[168:176] = data[168:176].replace(b".", b":")
    path.write_bytes(bytes(data))


def mic_digital_range_reversed(cohort: Path, patient: str) -> None:
    """Digital minimum and maximum of the Mic swapped: pyedflib reads the audio sign-inverted."""
    path = part_path(cohort, patient, 1)
    fields = signal_header_fields(path, "Mic")
    edit_signal_header(path, "Mic", digital_min=fields["digital_max"], digital_max=fields["digital_min"])


def mic_digital_range_empty(cohort: Path, patient: str) -> None:
    """Digital minimum equal to the maximum: pyedflib opens it, but no scaling to physical values exists."""
    path = part_path(cohort, patient, 1)
    edit_signal_header(path, "Mic", digital_min=signal_header_fields(path, "Mic")["digital_max"])


def mic_physical_range_beyond_a_float(cohort: Path, patient: str) -> None:
    """Physical maximum 1e308 (eight characters, valid EDF): every scaled sample overflows float32."""
    edit_signal_header(part_path(cohort, patient, 1), "Mic", physical_max="1e308")


def tracheal_labelled_mic(cohort: Path, patient: str) -> None:
    """The tracheal microphone exported under the label 'Mic' too: two signals answer to the name."""
    edit_signal_header(part_path(cohort, patient, 1), "Tracheal", label="Mic")


def truncate_last_part(cohort: Path, patient: str) -> None:
    path = parts_of(cohort, patient)[-1]
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])  # an upload cut short


def drop_mic(cohort: Path, patient: str) -> None:
    rewrite_edf(part_path(cohort, patient, 2), lambda signals, headers, header: signals.pop("Mic"))


def _resample_mic(path: Path, rate: int) -> None:
    def change(signals: dict, headers: dict, header: dict) -> None:
        old = int(headers["Mic"]["sample_frequency"])
        signals["Mic"] = sps.resample_poly(signals["Mic"], rate, old).clip(-1, 1)
        headers["Mic"]["sample_frequency"] = rate

    rewrite_edf(path, change)


def mic_at_8khz(cohort: Path, patient: str) -> None:
    for path in parts_of(cohort, patient):
        _resample_mic(path, 8000)


def part_at_another_rate(cohort: Path, patient: str) -> None:
    _resample_mic(part_path(cohort, patient, 2), 22_000)


def remove_middle_part(cohort: Path, patient: str) -> None:
    part_path(cohort, patient, 2).unlink()


def remove_last_part(cohort: Path, patient: str) -> None:
    parts_of(cohort, patient)[-1].unlink()


def _shorten(path: Path, seconds: int) -> None:
    def change(signals: dict, headers: dict, header: dict) -> None:
        for label, values in signals.items():
            rate = float(headers[label]["sample_frequency"])
            signals[label] = values[: len(values) - int(round(seconds * rate))]

    rewrite_edf(path, change)


def gap_between_parts(cohort: Path, patient: str) -> None:
    """Part [002] loses its last minute; part [003] still starts where it always did."""
    _shorten(part_path(cohort, patient, 2), 60)


def short_part_restamped(cohort: Path, patient: str) -> None:
    """Part [002] loses a minute and the later parts are re-stamped as if contiguous: only the RML can tell."""
    _shorten(part_path(cohort, patient, 2), 60)
    for path in parts_of(cohort, patient)[2:]:
        rewrite_edf(
            path, lambda signals, headers, header: header.update(startdate=header["startdate"] - timedelta(seconds=60))
        )


def remove_rml(cohort: Path, patient: str) -> None:
    rml_path(cohort, patient).unlink()


def garble_rml(cohort: Path, patient: str) -> None:
    rml_path(cohort, patient).write_bytes(b"<PatientStudy><Acquisition>cut off mid-upl")


def rml_of_another_recording(cohort: Path, patient: str) -> None:
    other = next(p.stem for p in sorted((cohort / "APNEA_RML").glob("*.rml")) if p.stem != patient)
    shutil.copyfile(rml_path(cohort, other), rml_path(cohort, patient))


def staging_too_long(cohort: Path, patient: str) -> None:
    def change(ann) -> None:
        end, stype = ann.stage_changes[-1]
        ann.stage_changes[-1] = (end + 3 * EPOCH_SECONDS, stype)

    _edit_rml(cohort, patient, change)


def staging_too_short(cohort: Path, patient: str) -> None:
    def change(ann) -> None:
        end = ann.stage_changes[-1][0] - 5 * EPOCH_SECONDS
        ann.stage_changes = [c for c in ann.stage_changes if c[0] < end] + [(end, ann.stage_changes[-1][1])]

    _edit_rml(cohort, patient, change)


def stage_before_start(cohort: Path, patient: str) -> None:
    _edit_rml(cohort, patient, lambda ann: ann.stage_changes.insert(0, (-EPOCH_SECONDS, "Wake")))


def two_stages_at_once(cohort: Path, patient: str) -> None:
    def change(ann) -> None:
        start, stype = ann.stage_changes[1]
        ann.stage_changes.insert(2, (start, "REM" if stype != "REM" else "Wake"))

    _edit_rml(cohort, patient, change)


def stage_at_an_absurd_time(cohort: Path, patient: str) -> None:
    """A Stage start of 1e300 s (finite, but no night's time): corrupt staging."""

    def change(ann) -> None:
        ann.stage_changes[2] = (1e300, ann.stage_changes[2][1])

    _edit_rml(cohort, patient, change)
    path = rml_path(cohort, patient)  # the writer rounds to milliseconds; write the value as a corrupt export does
    path.write_text(path.read_text().replace(f'Start="{format_seconds(1e300)}"', 'Start="1e300"'))


def stage_start_not_a_number(cohort: Path, patient: str) -> None:
    """A Stage whose Start reads "inf" (an overflowed export): dropping it would stretch the stage
    before it over its epochs, wrong labels that look right."""
    path = rml_path(cohort, patient)
    start, stype = parse_rml(path).stage_changes[2]
    stage = f'<Stage Type="{stype}" Start="{format_seconds(start)}"'  # as the writer lays it out
    text = path.read_text()
    if stage not in text:
        raise ValueError(f"{path}: no {stage} to damage")
    path.write_text(text.replace(stage, f'<Stage Type="{stype}" Start="inf"', 1))


def event_at_an_absurd_time(cohort: Path, patient: str) -> None:
    path = rml_path(cohort, patient)
    marker = "<Events>"
    path.write_text(
        path.read_text().replace(
            marker, marker + '<Event Family="Respiratory" Type="Hypopnea" Start="1e300" Duration="12"/>', 1
        )
    )


def events_outside(cohort: Path, patient: str) -> None:
    def change(ann) -> None:
        end = ann.stage_changes[-1][0]
        ann.events += [
            RmlEvent("Respiratory", "ObstructiveApnea", -20.0, 15.0),
            RmlEvent("Respiratory", "Hypopnea", end + 120.0, 20.0),
        ]

    _edit_rml(cohort, patient, change)


def event_with_negative_duration(cohort: Path, patient: str) -> None:
    path = rml_path(cohort, patient)
    text = path.read_text()
    marker = "<Events>"
    path.write_text(
        text.replace(marker, marker + '<Event Family="Respiratory" Type="Hypopnea" Start="600" Duration="-12"/>', 1)
    )


def overlapping_apnoeas(cohort: Path, patient: str) -> None:
    def change(ann) -> None:
        ann.events += [
            RmlEvent("Respiratory", "ObstructiveApnea", 300.0, 30.0),
            RmlEvent("Respiratory", "Hypopnea", 310.0, 25.0),
        ]

    _edit_rml(cohort, patient, change)


def clipped_mic(cohort: Path, patient: str) -> None:
    _set_mic(part_path(cohort, patient, 1), lambda x, rate: np.clip(x * 200.0, -1.0, 1.0))


def silent_stretch(seconds: float, start_s: float = 60.0) -> Callable[[Path, str], None]:
    """A microphone that goes flat for ``seconds`` (a constant, as a disconnected input reads)."""

    def apply(cohort: Path, patient: str) -> None:
        def edit(x: np.ndarray, rate: float) -> np.ndarray:
            x = x.copy()
            x[int(start_s * rate) : int((start_s + seconds) * rate)] = x[int(start_s * rate)]
            return x

        _set_mic(part_path(cohort, patient, 1), edit)

    return apply


def all_parts_silent(cohort: Path, patient: str) -> None:
    for path in parts_of(cohort, patient):
        _set_mic(path, lambda x, rate: np.zeros_like(x))


# ----------------------------------------------------------------------------- plain-layout faults


def _plain_audio(cohort: Path, name: str) -> Path:
    return next(p for p in cohort.iterdir() if p.stem == name and p.suffix in (".flac", ".wav"))


def plain_not_audio(cohort: Path, name: str) -> None:
    _plain_audio(cohort, name).write_bytes(b"fLaC but not really a FLAC stream" * 8)


def plain_8khz(cohort: Path, name: str) -> None:
    path = _plain_audio(cohort, name)
    audio, rate = sf.read(path, dtype="float32")
    path.unlink()
    sf.write(path.with_suffix(".wav"), sps.resample_poly(audio, 8000, rate).astype(np.float32), 8000)


def plain_at_1mhz(cohort: Path, name: str) -> None:
    """The night's samples under a header declaring 1 MHz (a corrupt rate field)."""
    path = _plain_audio(cohort, name)
    audio, _ = sf.read(path, dtype="float32")
    path.unlink()
    sf.write(path.with_suffix(".wav"), audio, 1_000_000, subtype="PCM_16")


def plain_nan_samples(cohort: Path, name: str) -> None:
    """Float WAV with a burst of NaN in epoch 2 (a broken DSP chain upstream)."""
    path = _plain_audio(cohort, name)
    audio, rate = sf.read(path, dtype="float32")
    audio[int(65 * rate) : int(65 * rate) + 500] = np.nan
    path.unlink()
    sf.write(path.with_suffix(".wav"), audio, rate, subtype="FLOAT")


def plain_stages_of_another_recording(cohort: Path, name: str) -> None:
    path = cohort / f"{name}.stages.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",recording_id", *(f"{line},someone-else" for line in lines[1:])]) + "\n")


def plain_garbled_stages(cohort: Path, name: str) -> None:
    (cohort / f"{name}.stages.csv").write_text("epoch_index,stage\n0,W\n1,DEEP\n")


def plain_stages_too_long(cohort: Path, name: str) -> None:
    path = cohort / f"{name}.stages.csv"
    lines = path.read_text().splitlines()
    last = int(lines[-1].split(",")[0])
    extra = [f"{i},{i * 30},N2" for i in range(last + 1, last + 4)]
    path.write_text("\n".join([*lines, *extra]) + "\n")


def plain_garbled_events(cohort: Path, name: str) -> None:
    (cohort / f"{name}.events.csv").write_text("start_s,duration_s,type\n12.5,ten,Hypopnea\n")


def plain_event_past_the_end(cohort: Path, name: str) -> None:
    with open(cohort / f"{name}.events.csv", "a") as handle:
        handle.write("99999,15,,ObstructiveApnea\n")


def _as_wav(cohort: Path, name: str) -> Path:
    """The night's audio rewritten as 16-bit WAV (the generator writes FLAC), its path."""
    path = _plain_audio(cohort, name)
    audio, rate = sf.read(path, dtype="float32")
    path.unlink()
    sf.write(path.with_suffix(".wav"), audio, rate, subtype="PCM_16")
    return path.with_suffix(".wav")


def plain_wav_cut_short(cohort: Path, name: str) -> None:
    """A WAV upload that stopped part way: the header still declares the whole night."""
    path = _as_wav(cohort, name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def plain_wav_never_finalised(cohort: Path, name: str) -> None:
    """A recorder that stopped before writing the sizes: RIFF and data sizes left at 0."""
    path = _as_wav(cohort, name)
    data = bytearray(path.read_bytes())
    data[4:8] = bytes(4)
    at = data.index(b"data")
    data[at + 4 : at + 8] = bytes(4)
    path.write_bytes(bytes(data))


def plain_flac_corrupt(cohort: Path, name: str) -> None:
    """64 KiB of a FLAC's middle overwritten (a disk or transfer error): it stops decoding there."""
    path = _plain_audio(cohort, name)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 65536] = np.random.default_rng(0).integers(0, 256, 65536, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def set_flac_total_samples(path: Path, total: int) -> None:
    """Rewrite the sample count a FLAC's STREAMINFO declares (its 36-bit field; the audio unchanged):
    STREAMINFO is the first metadata block, its 34 bytes after the ``fLaC`` marker and the block's
    4-byte header; the count is the last 36 bits of its bytes 10 to 17."""
    data = bytearray(path.read_bytes())
    if data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        raise ValueError(f"{path}: no STREAMINFO right after the fLaC marker")
    fields = int.from_bytes(data[18:26], "big")
    fields = (fields & ~(2**36 - 1)) | total
    data[18:26] = fields.to_bytes(8, "big")
    path.write_bytes(bytes(data))


def plain_flac_header_lies(cohort: Path, name: str) -> None:
    """A FLAC whose header declares 2^36 - 1 samples (the field's largest: 1,193 h at 16 kHz) in a file
    of a few minutes: no FLAC of that many bytes can hold it, even of digital silence."""
    set_flac_total_samples(_plain_audio(cohort, name), 2**36 - 1)


def plain_wav_beside_flac(cohort: Path, name: str) -> None:
    """The night uploaded twice, as FLAC and as WAV: two files, one recording id."""
    path = _plain_audio(cohort, name)
    audio, rate = sf.read(path, dtype="float32")
    sf.write(path.with_suffix(".wav" if path.suffix == ".flac" else ".flac"), audio, rate, subtype="PCM_16")


def plain_audio_missing(cohort: Path, name: str) -> None:
    _plain_audio(cohort, name).unlink()


def plain_stages_header_only(cohort: Path, name: str) -> None:
    (cohort / f"{name}.stages.csv").write_text("epoch_index,stage\n")


def plain_unknown_event_type(cohort: Path, name: str) -> None:
    with open(cohort / f"{name}.events.csv", "a") as handle:
        handle.write("40,12,,Apnoea\n")


FAULTS: tuple[Fault, ...] = (
    Fault("empty part", "psg-audio", "empty_file", "error", empty_part),
    Fault("part is not EDF", "psg-audio", "unreadable_edf", "error", not_edf),
    Fault("header field garbled", "psg-audio", "inconsistent_edf_header", "error", corrupt_header),
    Fault(
        "header counts too few records", "psg-audio", "inconsistent_edf_header", "error", header_claims_fewer_records
    ),
    Fault("start date with colons", "psg-audio", "inconsistent_edf_header", "error", start_date_with_colons),
    Fault("Mic digital range reversed", "psg-audio", "reversed_digital_range", "warning", mic_digital_range_reversed),
    Fault("Mic digital range empty", "psg-audio", "inconsistent_edf_header", "error", mic_digital_range_empty),
    Fault(
        "Mic physical range beyond a float",
        "psg-audio",
        "inconsistent_edf_header",
        "error",
        mic_physical_range_beyond_a_float,
    ),
    Fault("last part truncated", "psg-audio", "truncated_edf", "error", truncate_last_part),
    Fault("Mic channel missing", "psg-audio", "channel_missing", "error", drop_mic),
    Fault("two signals labelled Mic", "psg-audio", "duplicate_channel", "warning", tracheal_labelled_mic),
    Fault("Mic at 8 kHz", "psg-audio", "low_sample_rate", "error", mic_at_8khz),
    Fault("one part at another rate", "psg-audio", "inconsistent_parts", "error", part_at_another_rate),
    Fault("middle part missing", "psg-audio", "missing_part", "error", remove_middle_part),
    Fault("last part missing", "psg-audio", "missing_part", "error", remove_last_part),
    Fault("gap between parts", "psg-audio", "part_discontinuity", "error", gap_between_parts),
    Fault("short part, later parts re-stamped", "psg-audio", "short_part", "error", short_part_restamped),
    Fault("RML missing", "psg-audio", "annotation_missing", "warning", remove_rml),
    Fault("RML unparsable", "psg-audio", "bad_annotations", "error", garble_rml),
    Fault("RML of another recording", "psg-audio", "annotation_mismatch", "error", rml_of_another_recording),
    Fault("staging longer than audio", "psg-audio", "staging_length_mismatch", "error", staging_too_long),
    Fault("staging shorter than audio", "psg-audio", "staging_length_mismatch", "error", staging_too_short),
    Fault("stage before the start", "psg-audio", "invalid_staging", "error", stage_before_start),
    Fault("two stages at one time", "psg-audio", "invalid_staging", "error", two_stages_at_once),
    Fault("stage at an absurd time", "psg-audio", "invalid_staging", "error", stage_at_an_absurd_time),
    Fault("stage start not a number", "psg-audio", "invalid_staging", "error", stage_start_not_a_number),
    Fault("event at an absurd time", "psg-audio", "annotation_notes", "warning", event_at_an_absurd_time),
    Fault("events outside the recording", "psg-audio", "events_out_of_range", "warning", events_outside),
    Fault("event with negative duration", "psg-audio", "invalid_events", "warning", event_with_negative_duration),
    Fault("overlapping apnoea and hypopnoea", "psg-audio", "overlapping_events", "warning", overlapping_apnoeas),
    Fault("heavy clipping", "psg-audio", "clipping", "warning", clipped_mic),
    Fault("12 s of flat line in an epoch", "psg-audio", "zero_rms_epochs", "warning", silent_stretch(12.0, 62.0)),
    Fault("3-minute silent gap", "psg-audio", "silent_gap", "warning", silent_stretch(180.0)),
    Fault("microphone silent all night", "psg-audio", "no_valid_epochs", "error", all_parts_silent),
    Fault("plain file is not audio", "plain", "unreadable_audio", "error", plain_not_audio),
    Fault("plain file at 8 kHz", "plain", "low_sample_rate", "error", plain_8khz),
    Fault("plain file declaring 1 MHz", "plain", "high_sample_rate", "error", plain_at_1mhz),
    Fault("NaN samples", "plain", "nonfinite_samples", "warning", plain_nan_samples),
    Fault("stage CSV of another recording", "plain", "annotation_mismatch", "error", plain_stages_of_another_recording),
    Fault("stage CSV unparsable", "plain", "bad_annotations", "error", plain_garbled_stages),
    Fault("stage CSV longer than audio", "plain", "staging_length_mismatch", "error", plain_stages_too_long),
    Fault("events CSV unparsable", "plain", "bad_events", "error", plain_garbled_events),
    Fault("event past the end (CSV)", "plain", "events_out_of_range", "warning", plain_event_past_the_end),
    Fault("WAV cut short", "plain", "truncated_audio", "error", plain_wav_cut_short),
    Fault("WAV never finalised", "plain", "unfinalised_audio", "error", plain_wav_never_finalised),
    Fault("FLAC corrupted mid-file", "plain", "unreadable_audio", "error", plain_flac_corrupt),
    Fault("FLAC declaring more than its bytes hold", "plain", "truncated_audio", "error", plain_flac_header_lies),
    Fault("same night as WAV and FLAC", "plain", "duplicate_recording", "error", plain_wav_beside_flac),
    Fault("stage CSV without audio", "plain", "no_audio", "error", plain_audio_missing),
    Fault("stage CSV with a header only", "plain", "no_staging", "warning", plain_stages_header_only),
    Fault("event type not known (CSV)", "plain", "annotation_notes", "warning", plain_unknown_event_type),
)


def fault(name: str) -> Fault:
    """The fault called ``name`` (see ``FAULTS``)."""
    for item in FAULTS:
        if item.name == name:
            return item
    raise KeyError(f"no fault {name!r}; known: {[f.name for f in FAULTS]}")
