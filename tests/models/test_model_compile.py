"""torch.compile(fullgraph=True) traces the encoder, decoder and ViT through our attention custom op
(no graph break) and gives eager's outputs and gradients. aot_eager runs the same Dynamo + AOT-autograd
trace as inductor without generating code, which keeps the test to seconds on a CPU."""
from pathlib import Path

import pytest
import torch

from ptft_engine.models import build_model, load_model_config

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "models"


def _inputs(name):
    gen = torch.Generator().manual_seed(0)
    if name == "vit-tiny-digits":
        return (torch.rand(3, 1, 8, 8, generator=gen),), {}
    ids = torch.randint(1, 128, (3, 11), generator=gen)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False  # padding: the attention_mask reaches the custom op
    return (ids,), {"attention_mask": mask}


def _loss_and_grads(model, args, kwargs):
    model.zero_grad()
    out = model(*args, **kwargs)
    loss = out.float().square().mean()
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2-tiny", "llama-tiny", "vit-tiny-digits"])  # llama: GQA
def test_compiled_model_matches_eager(name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(load_model_config(PRESETS / f"{name}.yaml"))
    args, kwargs = _inputs(name)
    eager_out, eager_grads = _loss_and_grads(model, args, kwargs)
    model.compile(fullgraph=True, backend="aot_eager")  # in place (as run.compile); fullgraph: a break raises
    out, grads = _loss_and_grads(model, args, kwargs)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    assert grads.keys() == eager_grads.keys() and grads
    for n, g in grads.items():
        torch.testing.assert_close(g, eager_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_compiled_graph_holds_our_attention_op():
    """The graph keeps ptft::attention as one node: compile traced through the op, not around it."""
    torch._dynamo.reset()
    seen = []

    def record(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes)
        return gm

    model = build_model(load_model_config(PRESETS / "gpt2-tiny.yaml"))
    torch.compile(model, fullgraph=True, backend=record)(torch.randint(1, 128, (2, 9)))
    assert sum("ptft.attention" in t for t in seen) == model.config.num_hidden_layers
