"""Deterministic synthetic overnight recordings in PSG-Audio (EDF + RML) or plain layout.

Real PSG-Audio cannot be fetched here, so this generator exercises every reader and
model path: a plan per night (:mod:`.hypnogram`, :mod:`.breathing`), sound rendered in
chunks from it (:mod:`.sound`), and files on disk (:mod:`.writers`).
"""

from sleepsound.synth.hypnogram import NightPlan, SoundParams, SynthEvent, make_hypnogram, make_night_plan
from sleepsound.synth.sound import ALL_CHANNELS, channel_rates, synthesise_chunk
from sleepsound.synth.writers import (
    Progress,
    SubjectSummary,
    generate_cohort,
    patient_id,
    write_plain_night,
    write_psg_audio_night,
)

__all__ = [
    "ALL_CHANNELS",
    "NightPlan",
    "Progress",
    "SoundParams",
    "SubjectSummary",
    "SynthEvent",
    "channel_rates",
    "generate_cohort",
    "make_hypnogram",
    "make_night_plan",
    "patient_id",
    "synthesise_chunk",
    "write_plain_night",
    "write_psg_audio_night",
]
