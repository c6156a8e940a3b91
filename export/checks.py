"""Pre- and post-export checks: problems a user would otherwise meet later, named now."""
from __future__ import annotations

from dataclasses import dataclass, field

from runtime.errors import EdgeattnError
from zoo.io import PROTOBUF_LIMIT as TWO_GB

# ONNX ops the TensorRT ONNX parser (onnx-tensorrt, TensorRT 10/11/RTX) does not import. A static list: the
# authoritative check is the parser itself, which the simplify stage runs (optimize.trt_ready) when tensorrt or
# tensorrt_rtx is installed; it also sees what no op list can (e.g. upper-case Einsum equations).
TRT_UNSUPPORTED_OPS = {
    "SequenceConstruct", "SequenceAt", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceLength",
    "SplitToSequence", "ConcatFromSequence", "Optional", "OptionalHasElement", "OptionalGetElement",
    "StringNormalizer", "TfIdfVectorizer", "Unique", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearConv", "QLinearMatMul", "Bernoulli", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike", "Multinomial", "Col2Im", "STFT", "MelWeightMatrix", "RegexFullMatch", "StringConcat",
    "StringSplit", "ImageDecoder", "Adagrad", "Adam", "Momentum", "Gradient",
}


class ExportCheckError(EdgeattnError, ValueError):
    """A model cannot be exported as asked (opset too low, model too large for one file, ...)."""


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def raise_if_errors(self, subject: str) -> None:
        if self.errors:
            raise ExportCheckError(f"{subject}: " + "; ".join(self.errors))


def pre_export_check(module, opset: int) -> CheckReport:
    """Look at the PyTorch module before export."""
    from torch import nn

    rep = CheckReport()
    has_ln = any(isinstance(m, nn.LayerNorm) for m in module.modules())
    if has_ln and opset < 17:
        rep.errors.append(f"opset {opset} < 17: LayerNormalization would be decomposed into ~10 ops (slower, less "
                          "accurate in FP16, not fused by TensorRT); expected opset >= 17")
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    n_bytes += sum(b.numel() * b.element_size() for b in module.buffers())
    if n_bytes >= TWO_GB:
        rep.warnings.append(f"parameters are {n_bytes / 1e9:.2f} GB, over the 2 GB protobuf limit of one ONNX file: "
                            "every artifact is written with its weights in an external data file beside it "
                            "(<file>.<sha>.data); copy both")
    if module.training:
        rep.warnings.append("module was in training mode: exporting in eval mode (dropout off, BatchNorm running stats)")
    return rep


def post_export_check(model_proto) -> CheckReport:
    """Look at the exported graph: ops TensorRT cannot parse (by a static list; the simplify stage runs the
    installed TensorRT(-RTX) parser itself and names every node it rejects), float64 tensors."""
    rep = CheckReport()
    ops = {n.op_type for n in model_proto.graph.node}
    bad = sorted(ops & TRT_UNSUPPORTED_OPS)
    if bad:
        rep.warnings.append(f"ops with no TensorRT support: {bad}; engines will fail to build (the simplify stage "
                            "parses the graph with TensorRT(-RTX) when installed and names each rejected node)")
    import onnx

    f64 = [t.name for t in model_proto.graph.initializer if t.data_type == onnx.TensorProto.DOUBLE]
    if f64:
        rep.warnings.append(f"float64 initializers {f64[:3]}: TensorRT has no float64; cast to float32 in the model")
    return rep
