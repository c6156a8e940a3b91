"""The :class:`Task` object (one per model kind, zoo.tasks' registry holds them) and the handler set the tasks that
judge a model by its spec's outputs share (image / text classification, custom multi-output and sequence-to-sequence
models): one stage code path, the figures of judge.figures. A task that differs in a stage names its own handler
for that stage (text generation: every stage, serving included: a streaming Triton entry and its own load test)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from runtime.errors import EdgeattnError

# stage -> the one signature every task's handler for it has (a handler is a "module:attribute" string)
STAGES: dict[str, str] = {
    "train": "(ref, args) -> dict: one model trained, its train.json row",
    "train_summary": "(rows) -> list[str]: the lines train prints for this task's rows",
    "export": "(ref, args) -> None: <artifacts>/<model>/fp32.onnx + spec.json + manifest 'export'",
    "parity_feeds": "(spec) -> list[(label, feed)]: the sizes two graphs are compared at (simplify, trt_ready)",
    "quantize": "(model_dir, opts, force, progress) -> dict: manifest sections 'fp16' and 'int8' as written",
    "quantize_tables": "(name, result) -> None: quantize's printed tables",
    "verify_key": "(ref, limit) -> str: digest of what the model's verify rows depend on",
    "verify": "(ref, limit, threads, key=...) -> list[dict]: verify.json rows",
    "verify_markdown": "(model, rows) -> list[str]: the model's verify.md lines",
    "bench": "(ref, args, cfg, key, old) -> bench.__main__.Benched: rows or a generation section",
    "figures": "(reference, got, ...) -> report: the judge's figures this task is judged by",
    # serving (serve/): how `edgeattn triton` writes the model's entries, how `edgeattn loadtest` loads and reports them
    "triton_entries": "(out, name, ref, spec, choice, rows, opts) -> dict: the model's Triton entries 'python', "
                      "'onnx', 'trt' (each its manifest record, or {'entry', 'skipped'})",
    "triton_query": "(entry) -> list[str]: the repository README's lines that query the model's Python entry",
    "loadtest": "(repo, rec, settings, threads) -> dict: the load test of one served model, its loadtest.json record",
    "loadtest_markdown": "(result) -> list[str]: that record's loadtest.md lines",
    "loadtest_passed": "(result) -> bool: every level of that record passed",
    "loadtest_plot": "(results, folder) -> (file, caption): one figure of this task's records, written into folder",
}
# optional: "bench_version" an attribute (a code version added to bench's key: text generation's bench); the
# hf_* handlers say how an hf:<directory> of the task is built (zoo.registry.HFSource asks the task its source
# declares), only for the tasks a Hugging Face directory can be
OPTIONAL: dict[str, str] = {
    "bench_version": "str: added to bench's key",
    "hf_create": "(name, overrides) -> BuiltModel: the model of an hf:<directory> (or a trained HF folder)",
    "hf_build": "(ref) -> BuiltModel: what export exports for it (tokenizer files written beside)",
    "hf_source": "(ref) -> str: what its export is made from (the directory's digest), for export's up-to-date check",
}


class TaskError(EdgeattnError, KeyError):
    """An unknown task, a stage a task has no handler for, or a handler that cannot be imported."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Task:
    """A model kind: its name (the spec's ``task``), the handler each stage calls for it (``"module:attribute"``,
    resolved when the stage asks) and the facts stages read (which section of the report, which fp32 graph an
    engine is built from)."""

    name: str
    handlers: Mapping[str, str]
    report_section: str = "classification"  # bench.report: "classification" tables or "generation"
    fp32_sources: tuple[str, ...] = ("fp32.sim.onnx",)  # an fp32 engine's source, first existing file wins
    summary: str = ""  # one line for --help texts and errors
    facts: Mapping[str, Any] = field(default_factory=dict)  # more declarative facts a stage may read

    def __post_init__(self) -> None:
        unknown = sorted(set(self.handlers) - set(STAGES) - set(OPTIONAL))
        if unknown:
            raise TaskError(f"task '{self.name}': got handlers for {unknown}, expected stages among "
                            f"{sorted(STAGES) + sorted(OPTIONAL)}")

    def has(self, stage: str) -> bool:
        return stage in self.handlers

    def handler(self, stage: str) -> Any:
        """The object ``handlers[stage]`` names, imported now (lazily: a floor-3 registry names floor-4/5 code)."""
        if stage not in self.handlers:
            raise TaskError(f"task '{self.name}': got no handler for stage '{stage}', expected one of "
                            f"{sorted(self.handlers)}")
        return resolve(self.handlers[stage], f"task '{self.name}' stage '{stage}'")

    def run(self, stage: str, *args: Any, **kwargs: Any) -> Any:
        """Call this task's handler for ``stage``."""
        fn: Callable[..., Any] = self.handler(stage)
        return fn(*args, **kwargs)


def resolve(dotted: str, what: str) -> Any:
    """``"pkg.module:attribute"`` -> the attribute; TaskError saying what could not be imported."""
    module, sep, attr = dotted.partition(":")
    if not sep or not module or not attr:
        raise TaskError(f"{what}: got handler '{dotted}', expected 'package.module:attribute'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise TaskError(f"{what}: handler '{dotted}' cannot be resolved ({type(e).__name__}: {e})") from e


# the stages of a model judged by its spec's outputs against the reference's (classifiers, custom, seq2seq)
OUTPUT_HANDLERS: dict[str, str] = {
    "train": "zoo.train:train_classifier",
    "train_summary": "zoo.train:summary_lines",
    "export": "export.stage:export_outputs",
    "parity_feeds": "optimize.graph_parity:size_feeds",
    "quantize": "optimize.quantize:quantize_outputs",
    "quantize_tables": "optimize.quantize:print_tables",
    "verify_key": "verify.plan:verify_key",
    "verify": "verify.__main__:verify_model",
    "verify_markdown": "verify.__main__:outputs_markdown",
    "bench": "bench.__main__:bench_outputs",
    "figures": "judge.figures:compare_outputs",
    # served as a classifier: raw text or an image in, logits and label out (+ _onnx / _trt tensor entries)
    "triton_entries": "serve.repository:classifier_entries",
    "triton_query": "serve.readme:classifier_query_lines",
    "loadtest": "serve.loadtest:loadtest_model",
    "loadtest_markdown": "serve.loadtest:markdown_lines",
    "loadtest_passed": "serve.loadtest:model_passed",
    "loadtest_plot": "serve.loadtest:plot_figure",
}
