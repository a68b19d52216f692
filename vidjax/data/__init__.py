"""Data: clip records and manifests, the Grain loader, and video reading and writing."""
