"""The machine chattune runs on: CPU features (bf16 instructions), cores, memory and GPUs
(`machine`), and the process-wide malloc tuning of training and serving processes
(`malloc`). A low layer: everything above may ask it; it imports nothing of chattune's."""
