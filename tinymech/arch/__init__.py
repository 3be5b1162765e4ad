"""Model architectures: the Config, one module per family (its config and weight mapping),
rotary embeddings, bf16 storage and TransformerLens's weight processing."""
