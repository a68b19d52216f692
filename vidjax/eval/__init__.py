"""Evaluation: metrics, benchmarks and report entry points for trained vidjax models."""
