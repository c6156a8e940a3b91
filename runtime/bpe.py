"""A byte-level BPE tokenizer (GPT-2's) read from a ``tokenizers`` JSON file, in pure Python (stdlib only).

    tok = ByteLevelBPE.from_file("artifacts/gpt2_imdb/tokenizer.json")
    ids = tok.encode("This movie was")          # [1212, 3807, 373] with the real gpt2 tokenizer
    tok.decode(ids)                              # 'This movie was'

A device that runs ``runtime.generate`` needs neither transformers nor the ``tokenizers`` package: this module does
what ``tokenizers`` does for a GPT-2 style ``tokenizer.json`` and the test suite checks that the ids and the text
are the same as ``tokenizers``' own on real reviews (tests/test_generate.py). What it supports, and refuses with a
PreprocessError naming the field otherwise:

- ``model``: BPE with byte-level symbols, merges as ``"a b"`` strings or ``["a", "b"]`` pairs, ``ignore_merges``; no
  dropout, no ``continuing_subword_prefix`` / ``end_of_word_suffix``, no byte fallback.
- ``pre_tokenizer``: ByteLevel (``add_prefix_space``, ``use_regex``: GPT-2's split pattern
  ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``, written out by hand
  below because Python's ``re`` has no ``\\p{..}``), alone or in a Sequence.
- ``normalizer``: none, NFC/NFD/NFKC/NFKD, Lowercase, or a Sequence of those.
- ``added_tokens`` (special tokens such as ``<|endoftext|>``): matched literally in the text before the split
  (``lstrip`` / ``rstrip`` honoured), never merged with their neighbours.
- decoding: the ByteLevel decoder (bytes back to UTF-8, invalid sequences as U+FFFD, as ``tokenizers`` does);
  ``skip_special_tokens`` drops added special tokens.

Unicode classes come from Python's ``unicodedata`` (letters: categories L*, numbers: N*), whitespace from the
Unicode White_Space property; the Unicode version of the Python build may differ from the one ``tokenizers`` was
built with for characters assigned in between (none of them in the reviews we test on).
"""
from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from runtime.errors import PreprocessError

# Unicode White_Space (what \s means for the regex engines tokenizers uses); str.isspace() also counts U+001C..1F
WHITE_SPACE = frozenset([chr(c) for c in (*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                                          0x2028, 0x2029, 0x202F, 0x205F, 0x3000)])
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")  # after an apostrophe, in the pattern's order
NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase"}


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the 256 symbols byte-level BPE starts from)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, (chr(c) for c in chars)))


def _kind(ch: str) -> str:
    """'s' whitespace, 'L' letter, 'N' number, 'o' anything else (the classes of GPT-2's split pattern)."""
    if ch in WHITE_SPACE:
        return "s"
    cat = unicodedata.category(ch)[0]
    return cat if cat in ("L", "N") else "o"


def split_gpt2(text: str) -> list[str]:
    """GPT-2's pre-tokenization pattern, leftmost-first like the regex engine: contractions, `` ?letters``,
    `` ?numbers``, `` ?others``, whitespace not followed by a non-space (``\\s+(?!\\S)``), then any whitespace."""
    out: list[str] = []
    n = len(text)
    kinds = [_kind(c) for c in text]
    i = 0
    while i < n:
        c = text[i]
        if c == "'":  # 's|'t|'re|'ve|'m|'ll|'d
            hit = next((s for s in CONTRACTIONS if text.startswith(s, i + 1)), None)
            if hit is not None:
                out.append(text[i:i + 1 + len(hit)])
                i += 1 + len(hit)
                continue
        k = kinds[i]
        start = i
        if c == " " and i + 1 < n and kinds[i + 1] != "s":  # ' ?X+' with the optional space taken
            k = kinds[i + 1]
            i += 1
        if k in ("L", "N", "o"):
            j = i + 1
            while j < n and kinds[j] == k:
                j += 1
            out.append(text[start:j])
            i = j
            continue
        j = i + 1  # whitespace run
        while j < n and kinds[j] == "s":
            j += 1
        if j < n and j - i > 1:  # \s+(?!\S): leave the last space to prefix the next word
            j -= 1
        out.append(text[i:j])
        i = j
    return out


def _normalizer(spec: dict[str, Any] | None, source: str):
    if not spec:
        return None
    steps = spec.get("normalizers") if spec.get("type") == "Sequence" else [spec]
    bad = [s.get("type") for s in steps if s.get("type") not in NORMALIZERS]
    if bad:
        raise PreprocessError(f"tokenizer '{source}': normalizer {bad} is not supported by runtime.bpe; expected none "
                              f"or {sorted(NORMALIZERS)} (use the tokenizers package for this tokenizer)")
    kinds = [s["type"] for s in steps]

    def norm(text: str) -> str:
        for k in kinds:
            text = text.lower() if k == "Lowercase" else unicodedata.normalize(k, text)
        return text

    return norm


def _byte_level(spec: dict[str, Any] | None, source: str) -> dict[str, Any]:
    steps = (spec or {}).get("pretokenizers") if (spec or {}).get("type") == "Sequence" else [spec or {}]
    if len(steps) != 1 or steps[0].get("type") != "ByteLevel":
        got = [s.get("type") for s in steps] if steps else None
        raise PreprocessError(f"tokenizer '{source}': pre_tokenizer {got}, expected ByteLevel (a byte-level BPE "
                              "tokenizer such as GPT-2's)")
    return steps[0]


class ByteLevelBPE:
    """Encode/decode with a byte-level BPE ``tokenizer.json`` (see the module docstring for what is supported)."""

    def __init__(self, spec: dict[str, Any], source: str = "<dict>"):
        model = spec.get("model") or {}
        if model.get("type") != "BPE":
            raise PreprocessError(f"tokenizer '{source}': model type {model.get('type')!r}, expected 'BPE'")
        for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
            if model.get(key):
                raise PreprocessError(f"tokenizer '{source}': BPE {key}={model[key]!r} is not supported, expected none")
        if model.get("byte_fallback"):
            raise PreprocessError(f"tokenizer '{source}': BPE byte_fallback is not supported, expected byte-level "
                                  "symbols")
        pre = _byte_level(spec.get("pre_tokenizer"), source)
        self.add_prefix_space = bool(pre.get("add_prefix_space", False))
        self.use_regex = bool(pre.get("use_regex", True))
        self.normalize = _normalizer(spec.get("normalizer"), source)
        self.vocab: dict[str, int] = {str(k): int(v) for k, v in model["vocab"].items()}
        self.ignore_merges = bool(model.get("ignore_merges", False))
        self.ranks: dict[tuple[str, str], int] = {}
        for r, m in enumerate(model.get("merges") or []):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            self.ranks.setdefault((a, b), r)
        self.added: list[dict[str, Any]] = sorted(spec.get("added_tokens") or [], key=lambda t: -len(t["content"]))
        self.id_to_token: dict[int, str] = {v: k for k, v in self.vocab.items()}
        for t in self.added:
            self.vocab.setdefault(t["content"], int(t["id"]))
            self.id_to_token[int(t["id"])] = t["content"]
        self.special_ids = {int(t["id"]) for t in self.added if t.get("special")}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._cache: dict[str, list[int]] = {}
        self.source = source

    @classmethod
    def from_file(cls, path: str | Path) -> "ByteLevelBPE":
        p = Path(path)
        if not p.is_file():
            raise PreprocessError(f"tokenizer '{p}': no such file; expected the tokenizer.json the export writes "
                                  "beside the model")
        try:
            spec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PreprocessError(f"tokenizer '{p}': cannot read ({e}); expected a tokenizers JSON file") from e
        return cls(spec, str(p))

    @property
    def vocab_size(self) -> int:
        return max(self.id_to_token) + 1

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    # ---- encoding ------------------------------------------------------------------------------------------------
    def _bpe(self, word: str) -> list[int]:
        """One pre-token (already in byte symbols) -> ids: merge the lowest-ranked adjacent pair until none is left."""
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        if self.ignore_merges and word in self.vocab:
            ids = [self.vocab[word]]
        else:
            parts = list(word)
            while len(parts) > 1:
                best, best_rank = None, None
                for i in range(len(parts) - 1):
                    r = self.ranks.get((parts[i], parts[i + 1]))
                    if r is not None and (best_rank is None or r < best_rank):
                        best, best_rank = i, r
                if best is None:
                    break
                pair = (parts[best], parts[best + 1])
                merged, i = [], 0
                while i < len(parts):  # every occurrence of the best pair, left to right
                    if i < len(parts) - 1 and (parts[i], parts[i + 1]) == pair:
                        merged.append(parts[i] + parts[i + 1])
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            missing = [p for p in parts if p not in self.vocab]
            if missing:
                raise PreprocessError(f"tokenizer '{self.source}': symbols {missing[:3]} are not in the vocabulary; "
                                      "expected a byte-level vocabulary holding all 256 byte symbols")
            ids = [self.vocab[p] for p in parts]
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def _split_added(self, text: str) -> list[tuple[str, int | None]]:
        """Text -> [(piece, None) | (added token, its id)], longest added token first at each position."""
        if not self.added:
            return [(text, None)]
        out: list[tuple[str, int | None]] = []
        buf, i = [], 0
        while i < len(text):
            tok = next((t for t in self.added if text.startswith(t["content"], i)), None)
            if tok is None:
                buf.append(text[i])
                i += 1
                continue
            pending = "".join(buf)
            if tok.get("lstrip"):
                pending = pending.rstrip()
            if pending:
                out.append((pending, None))
            buf = []
            out.append((tok["content"], int(tok["id"])))
            i += len(tok["content"])
            if tok.get("rstrip"):
                while i < len(text) and text[i].isspace():
                    i += 1
        if buf:
            out.append(("".join(buf), None))
        return out

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, as ``tokenizers.Tokenizer.encode(text).ids`` (no special tokens added: GPT-2 adds
        none)."""
        if not isinstance(text, str):
            raise PreprocessError(f"text: got {type(text).__name__}, expected str")
        ids: list[int] = []
        for piece, added_id in self._split_added(text):
            if added_id is not None:
                ids.append(added_id)
                continue
            if self.normalize is not None:
                piece = self.normalize(piece)
            if self.add_prefix_space and not piece.startswith(" "):
                piece = " " + piece
            words = split_gpt2(piece) if self.use_regex else [piece]
            for w in words:
                ids.extend(self._bpe("".join(self.byte_encoder[b] for b in w.encode("utf-8"))))
        return ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    # ---- decoding ------------------------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Ids -> text (the ByteLevel decoder; invalid UTF-8 as U+FFFD)."""
        out, pending = [], bytearray()
        for i in ids:
            i = int(i)
            if skip_special_tokens and i in self.special_ids:
                continue
            tok = self.id_to_token.get(i)
            if tok is None:
                raise PreprocessError(f"decode: token id {i} is not in the vocabulary (0..{self.vocab_size - 1})")
            if i in self.special_ids or any(c not in self.byte_decoder for c in tok):
                out.append(pending.decode("utf-8", errors="replace"))
                pending = bytearray()
                out.append(tok)
            else:
                pending.extend(self.byte_decoder[c] for c in tok)
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


__all__ = ["ByteLevelBPE", "bytes_to_unicode", "split_gpt2"]
