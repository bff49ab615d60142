"""`vlmserve bench latency | throughput`: our speed on a model (real or dummy weights), beside transformers'."""
