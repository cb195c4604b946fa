"""Breathing events from the sound itself: a low-rate envelope, a detector, per-night indices."""
