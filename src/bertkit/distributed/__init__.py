"""Embedding beyond one process and beyond RAM: a corpus streamed into resumable, shardable Parquet parts
(``parts.py``: ``embed_to_parts``, ``read_parts``)."""

from bertkit.distributed.parts import PART_ROWS, embed_to_parts, parse_shard, read_manifest, read_parts

__all__ = ["PART_ROWS", "embed_to_parts", "parse_shard", "read_manifest", "read_parts"]
