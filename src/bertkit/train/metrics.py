"""Deprecated: the task metrics live in ``bertkit.metrics`` (they are used by inference and compression, not only by
training). This name is kept for one release and is the same module object."""

import sys
import warnings

from bertkit import metrics

warnings.warn("bertkit.train.metrics moved to bertkit.metrics", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = metrics
