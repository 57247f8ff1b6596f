"""How fast on one device? The fused LM-head loss, the training step, the teacher cache and sampling (GPU, with CPU
smoke modes)."""
