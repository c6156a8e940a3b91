"""Text generation: a decoder with its KV cache (gpt2_imdb, hf:<GPT-2 directory>). Trained with a time budget
(perplexity), exported as one decoder graph, quantised on teacher-forced token windows, verified by greedy tokens
against transformers, timed as TTFT and decode tokens/s, reported in its own section, served by Triton as a
streaming entry (one response per token; serve.genload load-tests it). An fp32 engine is built from the export's
graph when simplify wrote none."""
from runtime.modelspec import TEXT_GENERATION
from zoo.tasks.base import Task

NAME = TEXT_GENERATION
TASK = Task(NAME, {
    "train": "zoo.gpt2:train_stage",
    "train_summary": "zoo.gpt2:summary_lines",
    "export": "export.stage:export_decoder",
    "parity_feeds": "optimize.graph_parity:decoder_feeds",
    "quantize": "optimize.decoder_quant:quantize_decoder",
    "quantize_tables": "optimize.decoder_quant:print_tables",
    "verify_key": "verify.decoder:decoder_verify_key",
    "verify": "verify.decoder:verify_decoder",
    "verify_markdown": "verify.decoder:markdown_lines",
    "bench": "bench.__main__:bench_generation",
    "bench_version": "bench.generation:CODE_VERSION",
    "figures": "judge.teacher_forced:teacher_forced_figures",
    "hf_create": "zoo.registry:hf_decoder",
    "hf_build": "zoo.gpt2:load_for_export",
    "hf_source": "zoo.gpt2:export_source",
    "triton_entries": "serve.repository:generation_entries",
    "triton_query": "serve.readme:stream_query_lines",
    "loadtest": "serve.genload:loadtest_generation",
    "loadtest_markdown": "serve.genload:markdown_lines",
    "loadtest_passed": "serve.genload:passed",
    "loadtest_plot": "serve.genload:plot_figure",
}, report_section="generation", fp32_sources=("fp32.sim.onnx", "fp32.onnx"),
    summary="a decoder with a KV cache: greedy tokens, TTFT and decode tokens/s")
