"""One argument layer for every stage CLI: the shared arguments defined once (``--models``, ``--artifacts`` with the
same default everywhere, ``--max-drop``, ``--batches``, ``--flavor``, ``--threads``, ``--force``), each checked while
the command line is parsed, so a bad argument is refused before a stage reads, writes or deletes any file.

    ap = stage_parser("quantize", __doc__)
    add_models(ap)
    add_artifacts(ap, must_exist=True)
    add_max_drop(ap)
    args = ap.parse_args(argv)   # a bad argument raises ArgumentsError

A refused argument is an :class:`ArgumentsError` (a typed error): ``pipeline.stage.cli`` prints it as one line
``error: <stage>: ...`` (what was received, what was expected) and the stage exits 2. ``--help`` still prints the
usage and exits 0.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Callable, Sequence

from runtime.errors import EdgeattnError

DEFAULT_ARTIFACTS = "artifacts"
ENGINE_FLAVORS = ("auto", "trt", "trt10", "trt11", "rtx")


class ArgumentsError(EdgeattnError, ValueError):
    """A command-line argument a stage cannot take: what was received and what was expected."""


class StageParser(argparse.ArgumentParser):
    """argparse for a stage: an error raises :class:`ArgumentsError` (one line, exit 2 through pipeline.stage.cli)
    instead of printing the usage text and exiting."""

    def error(self, message: str):  # argparse's hook for every parse error
        raise ArgumentsError(_reword(message))


_REWORDS: tuple[tuple[str, Callable[[re.Match], str]], ...] = (  # argparse's message -> 'got ... expected ...'
    (r"unrecognized arguments: (.*)",
     lambda m: f"got unknown argument(s) {m[1]}; expected the options listed by --help"),
    (r"the following arguments are required: (.*)", lambda m: f"got no {m[1]}; expected it (required)"),
    (r"argument (\S+): invalid choice: (.*?) \(choose from (.*)\)",
     lambda m: f"{m[1]}: got {m[2]}, expected one of {m[3]}"),
    (r"argument (\S+): invalid (\S+) value: (.*)",
     lambda m: f"{m[1]}: got {m[3]}, expected {'an integer' if m[2] == 'int' else 'a number'}"),
    (r"argument (\S+?)(?:/\S+)?: (.*)", lambda m: f"{m[1]}: {m[2]}"),
)


def _reword(message: str) -> str:
    """argparse's own messages in the project's form ('got ... expected ...')."""
    for pattern, say in _REWORDS:
        m = re.match(pattern, message)
        if m:
            return say(m)
    return message


def stage_parser(stage: str, doc: str | None = None) -> StageParser:
    """The parser of one stage CLI (``edgeattn <stage>``)."""
    return StageParser(prog=f"edgeattn {stage}", description=doc,
                       formatter_class=argparse.RawDescriptionHelpFormatter)


# ---- value checks (argparse ``type=`` functions: they run while parsing, before any file is touched) ----------
def _bad(received: object, expected: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"got {received!r}, expected {expected}")


def models_text(text: str) -> str:
    """``--models``: a comma-separated list with at least one name; returned as 'a,b,c' (blanks dropped)."""
    names = [m.strip() for m in str(text).split(",") if m.strip()]
    if not names:
        raise _bad(text, "one or more model names, comma-separated (e.g. vit,torchvision:vit_b_16)")
    return ",".join(names)


def number(text: str, what: str, minimum: float | None = None, strict: bool = False) -> float:
    """A finite float, optionally ``> minimum`` (strict) or ``>= minimum``."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        v = math.nan
    low_ok = minimum is None or (v > minimum if strict else v >= minimum)
    if not math.isfinite(v) or not low_ok:
        raise _bad(text, what)
    return v


def count(text: str, what: str = "an integer >= 1", minimum: int = 1) -> int:
    """An integer >= ``minimum``."""
    try:
        v = int(str(text).strip())
    except ValueError:
        raise _bad(text, what) from None
    if v < minimum:
        raise _bad(text, what)
    return v


def positive_int(text: str) -> int:
    return count(text)


def rows_setting(text: str) -> int | str:
    """``--eval-samples``: a number of rows >= 1, 'all' or 'auto' (judge.budget.loop_rows)."""
    t = str(text).strip().lower()
    return t if t in ("all", "auto") else count(text, "a number of rows >= 1, 'all' or 'auto'")


def non_negative_int(text: str) -> int:
    return count(text, "an integer >= 0", 0)


def int_range(low: int, high: int) -> Callable[[str], int]:
    """A ``type=`` for an integer from ``low`` to ``high``."""
    def parse(text: str) -> int:
        v = count(text, f"an integer from {low} to {high}", low)
        if v > high:
            raise _bad(text, f"an integer from {low} to {high}")
        return v
    return parse


def int_list(text: str, what: str = "comma-separated integers >= 1 such as 1,8,32") -> list[int]:
    """``1,8,32`` -> [1, 8, 32]; empty, non-integer or < 1 items are refused."""
    items = [b.strip() for b in str(text).split(",") if b.strip()]
    if not items or not all(re.fullmatch(r"\+?\d+", b) and int(b) >= 1 for b in items):
        raise _bad(text, what)
    return [int(b) for b in items]


def max_drop(text: str) -> float:
    return number(text, "a number of accuracy points >= 0 (e.g. 0.5)", minimum=0.0)


def non_negative_number(text: str) -> float:
    return number(text, "a number >= 0", minimum=0.0)


def positive_seconds(text: str) -> float:
    return number(text, "a number of seconds > 0", minimum=0.0, strict=True)


def existing_folder(text: str) -> Path:
    """A folder that exists (an artifacts root a stage reads)."""
    p = Path(text)
    if not p.is_dir():
        what = "a file" if p.exists() else "no such folder"
        raise argparse.ArgumentTypeError(f"got '{text}' ({what}), expected the artifacts folder the earlier stages "
                                         "wrote (run 'edgeattn export' first, or pass --artifacts DIR)")
    return p


def existing_path(text: str) -> Path:
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"got '{text}' (no such file or folder), expected an existing path")
    return p


def choice_list(allowed: Sequence[str], allow_empty: bool = False) -> Callable[[str], tuple[str, ...]]:
    """A ``type=`` for a comma-separated subset of ``allowed``."""
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(p.strip() for p in str(text).split(",") if p.strip())
        bad = [p for p in items if p not in allowed]
        if bad or not (items or allow_empty):
            raise _bad(text, f"some of {','.join(allowed)}, comma-separated")
        return items
    return parse


# ---- the shared arguments ------------------------------------------------------------------------------------
def add_models(ap: argparse.ArgumentParser, required: bool = True, default: str | None = None,
               help: str = "comma-separated model names (e.g. vit,torchvision:vit_b_16)") -> None:
    ap.add_argument("--models", type=models_text, required=required and default is None, default=default, help=help)


def add_artifacts(ap: argparse.ArgumentParser, must_exist: bool) -> None:
    """``--artifacts`` (default 'artifacts' in every stage). ``must_exist``: the stage reads earlier stages' files,
    so a missing folder is refused (train and export create it)."""
    ap.add_argument("--artifacts", type=existing_folder if must_exist else Path, default=DEFAULT_ARTIFACTS,
                    help=f"artifacts root folder (default: {DEFAULT_ARTIFACTS})")


def add_max_drop(ap: argparse.ArgumentParser) -> None:
    """--max-drop: an override of the spec's budget (runtime.modelspec.DEFAULT_TOLERANCES is the one place defaults
    live); None when not given."""
    ap.add_argument("--max-drop", type=max_drop, default=None,
                    help="accuracy budget override: points vs fp32 (>= 0; default: the model spec's tolerances)")


def add_flavor(ap: argparse.ArgumentParser, flavors: Sequence[str] = ENGINE_FLAVORS,
               help: str = "engine flavour") -> None:
    ap.add_argument("--flavor", default="auto", choices=list(flavors), help=f"{help}: {', '.join(flavors)}")


def add_batches(ap: argparse.ArgumentParser, default: str | None = None,
                help: str = "comma-separated batch sizes") -> None:
    ap.add_argument("--batches", type=int_list, default=default, help=help)


def add_threads(ap: argparse.ArgumentParser, default: int | None = None,
                help: str = "intra-op threads (default: the backend's)") -> None:
    ap.add_argument("--threads", type=positive_int, default=default, help=help)


def add_kv_cache(ap: argparse.ArgumentParser, choices: Sequence[str]) -> None:
    """``--kv-cache``: a decoder's cache I/O in its quantised CPU forms (``choices``: optimize.kv_cache.CACHE_TYPES,
    passed in: this floor cannot import optimize); None when not given (the decoder options' default)."""
    ap.add_argument("--kv-cache", choices=list(choices), default=None,
                    help=f"a decoder's KV cache in its weight-only CPU forms: {', '.join(choices)} (float16: kept only "
                         "within the budget; default: float32). A model without a KV cache is refused")


def add_force(ap: argparse.ArgumentParser, help: str = "redo even when up to date") -> None:
    ap.add_argument("--force", action="store_true", help=help)


def require_one_model(flag: str, value: object, n_models: int) -> None:
    """``--weights`` / ``--data`` go with exactly one model."""
    if value and n_models != 1:
        raise ArgumentsError(f"{flag}: got {n_models} models, expected one (a file goes with one model)")
