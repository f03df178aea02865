"""Embedding beyond one process and beyond RAM: a corpus streamed into resumable, shardable Parquet parts
(``parts.py``: ``embed_to_parts``; read with ``read_parts`` / ``iter_parts``, from ``data/embedding_parts.py``),
and on Ray Data (``ray_data.py``: ``embed_dataset`` on a Ray Dataset, ``embed_to_parquet`` for files; ``ray`` is
imported only when one of them is called)."""

from bertkit.data.embedding_parts import iter_parts, read_manifest, read_parts
from bertkit.distributed.parts import PART_ROWS, embed_to_parts, parse_shard
from bertkit.distributed.ray_data import EmbedActor, embed_dataset, embed_to_parquet, read_ray_output

__all__ = ["PART_ROWS", "EmbedActor", "embed_dataset", "embed_to_parquet", "embed_to_parts", "iter_parts",
           "parse_shard", "read_manifest", "read_parts", "read_ray_output"]
