"""Knowledge distillation: a smaller student learns from fine-tuned teachers, or from an encoder on raw text.

  config.py     ``DistillConfig`` / ``GeneralDistillConfig``, the checks they share, the files a run writes
  students.py   building the student: from teacher layers, from a narrower config, or an encoder directory
  losses.py     the losses (soft labels, hidden states, attention, value relations) and ``capture``, which reads
                hidden states and attention projections out of a forward
  distiller.py  ``Distiller``: the student and its projections, the module the Trainer trains
  task.py       ``distill``: task-specific distillation from fine-tuned teachers
  general.py    ``distill_general``: task-agnostic distillation on raw text
"""

from bertkit.compress.distill.config import (
    ATTN_LAYERS,
    CONFIG_FILE,
    GENERAL_CONFIG_FILE,
    GENERAL_OUTPUT_FILES,
    LOSSES,
    OUTPUT_FILES,
    RESULTS_FILE,
    DistillConfig,
    GeneralDistillConfig,
)
from bertkit.compress.distill.distiller import Distiller
from bertkit.compress.distill.general import GeneralDistillResult, TextBatch, distill_general, text_batch
from bertkit.compress.distill.losses import (
    Internals,
    attention_kl,
    capture,
    hidden_mse,
    layer_attention_kl,
    normalize_weights,
    pick_relation_heads,
    relation_kl,
    relation_scores,
    soft_label_loss,
    soft_targets,
    value_relation_kl,
)
from bertkit.compress.distill.students import (
    build_task_student,
    check_student_layers,
    encoder_of,
    student_from_config,
    student_from_teacher,
    uniform_layer_map,
)
from bertkit.compress.distill.task import DistillResult, check_data_labels, check_teachers, distill

__all__ = ["ATTN_LAYERS", "CONFIG_FILE", "GENERAL_CONFIG_FILE", "GENERAL_OUTPUT_FILES", "LOSSES", "OUTPUT_FILES",
           "RESULTS_FILE", "DistillConfig", "DistillResult", "Distiller", "GeneralDistillConfig",
           "GeneralDistillResult", "Internals", "TextBatch", "attention_kl", "build_task_student", "capture",
           "check_data_labels", "check_student_layers", "check_teachers", "distill", "distill_general", "encoder_of",
           "hidden_mse", "layer_attention_kl", "normalize_weights", "pick_relation_heads", "relation_kl",
           "relation_scores", "soft_label_loss", "soft_targets", "student_from_config", "student_from_teacher",
           "text_batch", "uniform_layer_map", "value_relation_kl"]
