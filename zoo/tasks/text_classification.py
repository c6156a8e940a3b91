"""Text classification (text_transformer, bert_imdb, hf:<directory>): tokenised text in, logits out; judged like any
classifier, by accuracy, agreement and logit cosine on the test split."""
from zoo.tasks.base import OUTPUT_HANDLERS, Task

TASK = Task("text_classification", OUTPUT_HANDLERS, summary="logits over classes from tokenised text")
