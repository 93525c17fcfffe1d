"""Per-example gradient norms of the cross-entropy loss, exact (torch.func) and last-layer closed form.

Used by GraNd (Paul, Ganguli, Dziugaite, "Deep learning on a data diet: finding important examples
early in training", NeurIPS 2021). The exact norm vmaps `torch.func.grad` over the batch, so one
call does the work of N separate backward passes; BatchNorm runs in eval mode (running statistics)
because vmap cannot update them, and because a per-example gradient must not depend on the other
examples of the batch.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block and restore each submodule's training flag after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def per_example_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           chunk_size: int | None = None) -> torch.Tensor:
    """Exact ||grad_w CE(f(x_i), y_i)||_2 over all trainable parameters w, one value per row of `x`.

    `x` (N, ...) and `y` (N,) int64 must be on the model's device. Per-example gradients are formed
    `chunk_size` examples at a time (None = all at once) and reduced to their norm inside the vmap,
    so memory is about chunk_size x (number of parameters) floats whatever N is.
    """
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def loss_one(trainable, xi, yi):
        logits = functional_call(model, ({**trainable, **frozen}, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    def norm_one(xi, yi):
        grads = grad(loss_one)(params, xi, yi)
        return torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))

    with eval_mode(model):
        return vmap(norm_one, chunk_size=chunk_size)(x, y)


def last_layer_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Closed-form norm of the gradient w.r.t. the last linear layer only: ||p - onehot(y)|| * sqrt(||h||^2 + 1).

    For logits z = W h + b and softmax p, dCE/dW = (p - y) h^T and dCE/db = p - y, so the norm is
    ||p - y|| * sqrt(||h||^2 + 1) (without the +1 when the classifier has no bias). `model` must
    offer `penultimate(x)` -> h (N, d) and `classifier` (nn.Linear) with forward == classifier(penultimate).
    """
    with eval_mode(model), torch.no_grad():
        features = model.penultimate(x).flatten(1)
        probs = torch.softmax(model.classifier(features), dim=1)
        error = probs - F.one_hot(y, probs.shape[1]).to(probs.dtype)
        bias = 1.0 if model.classifier.bias is not None else 0.0
        return error.norm(dim=1) * torch.sqrt(features.pow(2).sum(dim=1) + bias)


def per_example_grad_norms_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference implementation: one backward pass per example (slow; for tests and benchmarks)."""
    params = [p for p in model.parameters() if p.requires_grad]
    norms = []
    with eval_mode(model):
        for i in range(len(x)):
            loss = F.cross_entropy(model(x[i: i + 1]), y[i: i + 1])
            grads = torch.autograd.grad(loss, params)
            norms.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    return torch.stack(norms)
