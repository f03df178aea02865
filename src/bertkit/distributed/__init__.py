"""Embedding beyond one process and beyond RAM: a corpus streamed into resumable, shardable Parquet parts
(``parts.py``: ``embed_to_parts``; read with ``read_parts`` / ``iter_parts``, from ``data/embedding_parts.py``)."""

from bertkit.data.embedding_parts import iter_parts, read_manifest, read_parts
from bertkit.distributed.parts import PART_ROWS, embed_to_parts, parse_shard

__all__ = ["PART_ROWS", "embed_to_parts", "iter_parts", "parse_shard", "read_manifest", "read_parts"]
