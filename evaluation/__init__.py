"""Measuring generators: `python -m evaluation.fid` (standard FID/IS/KID via torch-fidelity; see issue 3)."""
