"""Corpus data: storage codecs, shard and manifest schemas, readers and writers.

The corpus stages live in :mod:`spatialdreamer.corpus` (imported on demand: it pulls in
the depth models); the manifest readers are light and exported here.
"""

from spatialdreamer.data.codecs import disparity_from_u16, disparity_to_u16
from spatialdreamer.data.manifest import CLIP_SCHEMA, FAILURE_SCHEMA, load_manifest, summarize_manifest

__all__ = [
    "CLIP_SCHEMA",
    "FAILURE_SCHEMA",
    "disparity_from_u16",
    "disparity_to_u16",
    "load_manifest",
    "summarize_manifest",
]
