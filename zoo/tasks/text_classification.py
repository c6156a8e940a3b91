"""Text classification (text_transformer, bert_imdb, hf:<directory>): tokenised text in, logits out; judged like any
classifier, by accuracy, agreement and logit cosine on the test split. An hf:<directory> that is not a GPT-2 is
built as a sequence classifier (zoo.hf)."""
from zoo.tasks.base import OUTPUT_HANDLERS, Task

TASK = Task("text_classification", {
    **OUTPUT_HANDLERS,
    "hf_create": "zoo.registry:hf_classifier",
    "hf_build": "zoo.registry:hf_classifier_for_export",
    "hf_source": "zoo.registry:hf_classifier_source",
}, summary="logits over classes from tokenised text")
