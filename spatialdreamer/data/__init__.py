"""Corpus data: storage codecs, shard and manifest schemas, readers and writers."""

from spatialdreamer.data.codecs import disparity_from_u16, disparity_to_u16

__all__ = ["disparity_from_u16", "disparity_to_u16"]
