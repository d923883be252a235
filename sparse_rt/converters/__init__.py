"""Converters: ONNX and torch models to the IR, and lowering of linear layers."""
