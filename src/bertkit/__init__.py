"""bertkit: a toolkit for BERT-family text encoders."""

from bertkit.encoder import Encoder, load
from bertkit.errors import BertkitError, CheckpointError, ConfigError, InputFileError
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.task_model import TaskModel, load_task_model
from bertkit.train.engine import TrainConfig
from bertkit.train.finetune import FinetuneConfig, finetune
from bertkit.train.pretrain import PretrainConfig, pretrain

__version__ = "0.1.0"
__all__ = ["BertModel", "BertkitError", "CheckpointError", "ConfigError", "Encoder", "EncoderConfig",
           "FinetuneConfig", "InputFileError", "PretrainConfig", "TaskModel", "TrainConfig", "finetune", "load",
           "load_task_model", "pretrain"]
