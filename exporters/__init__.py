"""Exporters: ONNX, TorchScript and torch.export artefacts of CNN-KAE encoders and decoders."""
