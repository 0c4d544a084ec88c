"""A straightforward transcription of the published Wanda pruning loop (Sun et al., 2024, `prune_wanda`
and `WrappedGPT` of the reference repository), batch size one, kept only as the yardstick that tests hold
dsa_core's batched implementation to. Not used by the product. One change: the statistics are float32 as
published, or float64 for a float64 model, so that a check in float64 is float64 throughout."""

import torch
from torch import nn


class WrappedGPT:
    def __init__(self, layer):
        self.layer = layer
        self.rows, self.columns = layer.weight.data.shape
        self.scaler_row = torch.zeros((self.columns), device=layer.weight.device,
                                      dtype=torch.promote_types(layer.weight.dtype, torch.float32))
        self.nsamples = 0

    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(self.scaler_row.dtype)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


def find_layers(module, layers=(nn.Linear,), name=""):
    if type(module) in layers:
        return {name: module}
    res = {}
    for name1, child in module.named_children():
        res.update(find_layers(child, layers=layers, name=name + "." + name1 if name != "" else name1))
    return res


class Catcher(nn.Module):
    def __init__(self, module, inps, cache):
        super().__init__()
        self.module, self.inps, self.cache = module, inps, cache

    def forward(self, inp, **kwargs):
        self.inps[self.cache["i"]] = inp
        self.cache["i"] += 1
        self.cache["kwargs"] = kwargs
        raise ValueError


def _layer_out(layer, x, kwargs):
    out = layer(x.unsqueeze(0), **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def prune_wanda(model, windows: torch.Tensor, sparsity: float) -> None:
    layers = model.model.layers
    nsamples, seqlen = windows.shape
    param = next(iter(model.parameters()))
    inps = torch.zeros((nsamples, seqlen, model.config.hidden_size), dtype=param.dtype, device=param.device)
    cache = {"i": 0, "kwargs": None}
    layers[0] = Catcher(layers[0], inps, cache)
    for j in range(nsamples):
        try:
            model(windows[j : j + 1].to(param.device), use_cache=False)
        except ValueError:
            pass
    layers[0] = layers[0].module
    kwargs = cache["kwargs"]
    outs = torch.zeros_like(inps)
    for i in range(len(layers)):
        layer = layers[i]
        subset = find_layers(layer)
        wrapped = {name: WrappedGPT(subset[name]) for name in subset}

        def add_batch(name):
            def tmp(_, inp, out):
                wrapped[name].add_batch(inp[0].data, out.data)  # noqa: B023 (as in the reference)
            return tmp

        handles = [subset[name].register_forward_hook(add_batch(name)) for name in wrapped]
        for j in range(nsamples):
            outs[j] = _layer_out(layer, inps[j], kwargs)
        for h in handles:
            h.remove()
        for name in subset:
            W_metric = torch.abs(subset[name].weight.data) * torch.sqrt(wrapped[name].scaler_row.reshape((1, -1)))
            W_mask = torch.zeros_like(W_metric) == 1
            sort_res = torch.sort(W_metric, dim=-1, stable=True)
            indices = sort_res[1][:, : int(W_metric.shape[1] * sparsity)]
            W_mask.scatter_(1, indices, True)
            subset[name].weight.data[W_mask] = 0
        for j in range(nsamples):
            outs[j] = _layer_out(layer, inps[j], kwargs)
        inps, outs = outs, inps
