"""Files to arrays and text: model sources (folders, the hub cache, GGUF, "smollm2"), safetensors
and GGUF containers, the tokenizer, and reading files safely. Imports nothing above it."""
