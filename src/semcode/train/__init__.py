"""Training machinery shared by the encoder and decoder stages: the DeepSpeed engine and pair batches."""
