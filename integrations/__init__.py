"""Serving a tuned config with the servers people run: vLLM, SGLang and TensorRT-LLM."""
