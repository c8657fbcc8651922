"""Signed system and update reports: S/MIME in, verified against trusted fingerprints, stored."""
