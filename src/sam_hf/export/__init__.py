"""Export of a model to other runtimes: `export_onnx` (ONNX, for onnxruntime)."""

from .onnx import ExportResult, export_onnx

__all__ = ["ExportResult", "export_onnx"]
