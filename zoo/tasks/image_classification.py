"""Image classification (vit, attention_cnn, torchvision:<arch>, an ONNX file with an image input and logits): judged
by top-1 accuracy, agreement and logit cosine against the reference, on the test split or seeded images."""
from zoo.tasks.base import OUTPUT_HANDLERS, Task

TASK = Task("image_classification", OUTPUT_HANDLERS, summary="logits over classes from images")
