"""Exporting a trained detector to other runtimes (ONNX: :mod:`.onnx`)."""
