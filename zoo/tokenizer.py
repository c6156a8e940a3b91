"""Train a WordPiece tokenizer locally and save it as one JSON file (loadable without torch)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]  # ids 0, 1, 2, 3


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_len: int, path: str | Path,
                    truncation_side: str = "right") -> Path:
    """Fit a lowercasing WordPiece vocabulary on ``texts`` (training split only) and write ``path``.

    The JSON carries truncation to ``max_len`` tokens and a post-processor that puts [CLS] first, so
    the runtime's ``TextEncoder`` encodes exactly as training did.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2)
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", tok.token_to_id("[CLS]"))])
    # "left" keeps the END of a long text (for reviews the verdict is usually at the end)
    tok.enable_truncation(max_length=max_len, direction=truncation_side)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    return path
