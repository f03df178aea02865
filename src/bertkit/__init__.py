"""bertkit: a toolkit for BERT-family text encoders."""

from bertkit.encoder import Encoder, load
from bertkit.errors import BertkitError, CheckpointError, ConfigError, InputFileError
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig

__version__ = "0.1.0"
__all__ = ["BertModel", "BertkitError", "CheckpointError", "ConfigError", "Encoder", "EncoderConfig",
           "InputFileError", "load"]
