"""The onnxruntime runtime: sessions on CPU or CUDA, and the shipped models as their ONNX graphs, weights
and integer tables. Needs numpy and onnxruntime, never torch."""
