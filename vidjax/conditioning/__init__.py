"""Conditioning signals: depth structure (Gen-1's structure fidelity t_s) and content."""
