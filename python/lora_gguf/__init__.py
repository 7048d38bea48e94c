"""lora-gguf: the Python side of the LoRA → GGUF toolchain (the training-parity recorder, `lora_gguf.record`)."""
