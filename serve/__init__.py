"""Serving NextStep-1 behind Triton Inference Server: caps, the batched request handler, the Python-backend model,
the model repository writer, the server launcher and the client (torch-free)."""
