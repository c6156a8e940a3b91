"""Verification of every artifact against PyTorch: run (worker subprocesses), compare, localise failures."""
