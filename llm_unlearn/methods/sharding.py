"""Whole tensors from sharded parameters (torch's `fully_shard`, FSDP2, tensor parallelism)."""

from __future__ import annotations

import torch


def has_sharded_parameters(model) -> bool:
    """Whether a parameter is a DTensor (torch's `fully_shard`, FSDP2, or tensor parallelism): then no process
    holds it whole."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(param, DTensor) for param in model.parameters())


def gathered_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's state dict with whole tensors. DTensor parameters: a collective that every process must join;
    the main process gets every tensor on the CPU, the others an empty dict. Otherwise the plain state dict."""
    if not has_sharded_parameters(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if state:
        # Tied parameters (lm_head and embeddings) come back as separate copies; share them again, as in a
        # plain state dict, so that save_pretrained writes one tensor for them.
        first_name = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) in first_name and name in state:
                state[name] = state[first_name[id(param)]]
            first_name.setdefault(id(param), name)
    return state
