"""How does it scale? LLM-size pairs on one and several GPUs (DDP, FSDP2), against a hand-written loop and TRL."""
