"""The judge (floor 2: imports only runtime/; numpy, never torch or onnx): how every stage decides whether an artifact
is good enough, written once so the quantize/fp16 budget loops and verify cannot disagree.

- ``judge.figures``: a classifier's (any logits') figures against a reference: scaled max abs, cosine, top-1
  agreement, accuracy and its delta with a 95 % interval, NaN/Inf, degenerate references; ``compare`` judges them.
- ``judge.embedding``: sentence embeddings' figures: per-sample cosine and top-k nearest-neighbour agreement.
- ``judge.teacher_forced``: a decoder's figures: teacher-forced next-token agreement, accuracy delta, perplexity.
- ``judge.budget``: the one ``Budget`` (from the spec's tolerances; runtime.modelspec.DEFAULT_TOLERANCES is the only
  place defaults live), the one verdict (``reasons`` / ``passes``) and the resolution rule (``check_resolution``).
- ``judge.interval``: the seeded paired bootstrap behind every interval.
- ``judge.rows``: the verify row schema (``VerifyRow``), fields not strings, reading older verify.json rows too.
"""
