"""Feature extraction (sentence embeddings: hf:<bare encoder>, e.g. all-MiniLM-L6-v2): tokenised text in, one
mean-pooled, L2-normalised vector per sample out (zoo.hf.HFSentenceEmbedder). No labels: judged by the per-sample
cosine to the fp32 reference and by retrieval agreement, each sample's k nearest neighbours among the others, fp32
vs the artifact (judge.embedding; the bars are the spec's tolerances, runtime.modelspec). The stages treat it like any
model judged on its outputs; the HF folder is built by the same handlers as a classifier's (zoo.hf picks the
embedder for this task)."""
from runtime.modelspec import FEATURE_EXTRACTION
from zoo.tasks.base import OUTPUT_HANDLERS, Task

TASK = Task(FEATURE_EXTRACTION, {
    **OUTPUT_HANDLERS,
    "hf_create": "zoo.registry:hf_classifier",
    "hf_build": "zoo.registry:hf_classifier_for_export",
    "hf_source": "zoo.registry:hf_classifier_source",
}, summary="sentence embeddings: embedding cosine and nearest-neighbour agreement")
