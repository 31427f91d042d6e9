"""Whole images: sources (OCI layout, docker-archive, registry, sinks),
manifest and index models, and conversion into a sink."""
