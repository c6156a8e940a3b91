"""Custom models (``module:factory``, sequence-to-sequence, an ONNX file whose outputs say no class): any number of
outputs, each compared with the reference's (cosine, max abs difference); the task of a model whose spec is not
written yet (a built-in before training or export), since the spec then decides."""
from zoo.tasks.base import OUTPUT_HANDLERS, Task

TASK = Task("custom", OUTPUT_HANDLERS, summary="any outputs, compared output by output (incl. sequence-to-sequence)")
