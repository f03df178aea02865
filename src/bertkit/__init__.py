"""bertkit: a toolkit for BERT-family text encoders."""

from bertkit.encoder import Encoder
from bertkit.ensemble import Ensemble
from bertkit.errors import BertkitError, CheckpointError, ConfigError, InputFileError
from bertkit.loader import inspect, load, load_fill_mask, load_task_model
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.families import FAMILIES
from bertkit.task_model import TaskModel
from bertkit.train.finetune import FinetuneConfig, finetune
from bertkit.train.pretrain import PretrainConfig, pretrain
from bertkit.train.trainer import TrainConfig

__version__ = "0.1.0"
__all__ = ["FAMILIES", "BertModel", "BertkitError", "CheckpointError", "ConfigError", "Encoder", "EncoderConfig",
           "Ensemble", "FinetuneConfig", "InputFileError", "PretrainConfig", "TaskModel", "TrainConfig", "finetune",
           "inspect", "load", "load_fill_mask", "load_task_model", "pretrain"]
