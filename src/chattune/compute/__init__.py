"""Computes: the local machine, named computes, VM sizes and the memory-fit estimate.

- `machine`: this machine's cores, RAM, GPUs and bf16 support, as an Azure-style `VmSize`.
- `store`: the workspace's computes (`local` always; named ones with a recorded size).
- `estimate`: peak memory per device for fine-tuning and serving (the formula is there).
- `fit`: a model against a compute (`chattune compute fit`); `resolve_arch`.
- `allow`: the models' compute allow lists, following the estimate.
- `measure`: real peak memory of a few training steps, to calibrate the estimate.

Submodules are imported where used, so that `measure`'s subprocess stays light.
"""
