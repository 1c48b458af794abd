"""Models: what they are (registry), where their ONNX files come from (export, hub), running them (embedder)."""
