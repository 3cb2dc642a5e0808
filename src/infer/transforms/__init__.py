"""ONNX -> ONNX rewrites that every ONNX-consuming backend receives (precision, preprocessing)."""
