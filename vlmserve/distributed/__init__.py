"""Tensor parallelism: how parameters are split across ranks (sharding)."""
