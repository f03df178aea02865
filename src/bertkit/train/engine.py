"""Deprecated: the training loop lives in ``bertkit.train.trainer`` (``Trainer``), so that it is not mistaken for
``bertkit.inference.engine`` (``Engine``, how inference runs). This name is kept for one release and is the same
module object."""

import sys
import warnings

from bertkit.train import trainer

warnings.warn("bertkit.train.engine was renamed bertkit.train.trainer", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = trainer
