"""Does distillation help? Student accuracy or perplexity with and without a teacher, over seeds (CPU)."""
