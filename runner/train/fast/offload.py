"""training.activation_offloading: the tensors autograd saves for backward wait in pinned CPU memory
instead of GPU memory (torch's saved-tensor hooks, the mechanism torch.autograd.graph.save_on_cpu
uses). Unlike save_on_cpu, parameters and small tensors stay where they are: a weight saved by a
matmul is already resident, and copying it out and back every step would only cost bandwidth. With
gradient checkpointing, what is saved is each layer's input, so the copies are few and large; the
recomputation inside backward keeps its own tensors on the GPU."""

from __future__ import annotations

import contextlib

MIN_BYTES = 1 << 20  # smaller tensors are not worth a copy each way


def offloading():
    """A context under which saved activations on an accelerator go to pinned host memory."""
    import torch

    def pack(tensor):
        if tensor.device.type == "cpu" or isinstance(tensor, torch.nn.Parameter) \
                or tensor.numel() * tensor.element_size() < MIN_BYTES:
            return tensor
        host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        return (tensor.device, host)

    def unpack(packed):
        if isinstance(packed, tuple):
            device, host = packed
            return host.to(device, non_blocking=True)
        return packed

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def maybe_offloading(on: bool):
    return offloading() if on else contextlib.nullcontext()
