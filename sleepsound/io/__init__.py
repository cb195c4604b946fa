"""Readers for the layouts sleepsound accepts: PSG-Audio (EDF + RML) and plain audio + CSV."""
