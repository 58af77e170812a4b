"""Inference engines: exact token ids and logprobs for training."""
