"""recipe.prefetch: batches paired on a worker thread are the batches paired in the step, for a
seed; OT-CFM trained on them has the weights of OT-CFM with the coupling in its loss; resume."""

from __future__ import annotations

import pytest
import torch

from minigen.data.toy2d import sample_2d
from minigen.nets.mlp import MLP
from minigen.recipe.couplings import ExactOT, SinkhornOT, independent
from minigen.recipe.objectives import CFM
from minigen.recipe.paths import LinearPath
from minigen.recipe.prefetch import PairedBatches, batch_generator
from minigen.train import train

torch.set_num_threads(1)


def draw(g):
    return sample_2d("8gaussians", 64, g), sample_2d("moons", 64, g)


@pytest.mark.parametrize("coupling", [ExactOT(), SinkhornOT()], ids=repr)
def test_prefetched_batches_are_the_batches_paired_in_the_caller(coupling):
    with PairedBatches(draw, coupling, seed=3, ahead=3) as ahead:
        fetched = [ahead(None) for _ in range(8)]
    inline = PairedBatches(draw, coupling, seed=3, ahead=0)
    for k, (a0, a1) in enumerate(fetched):
        b0, b1 = inline(None)
        assert torch.equal(a0, b0) and torch.equal(a1, b1), f"batch {k}"
    x0, x1 = draw(batch_generator(3, 0))
    assert not torch.equal(fetched[0][1], x1)  # the OT plan did re-pair the batch


def run(sample_batch, loss, steps, checkpoint=None):
    torch.manual_seed(0)
    model = MLP(2, width=32)
    return train(model, loss, sample_batch, steps=steps, seed=1, progress=False,
                 checkpoint=checkpoint, ema_decay=0.9)


def test_ot_cfm_on_prefetched_pairs_has_the_weights_of_ot_in_the_loss():
    with PairedBatches(draw, ExactOT(), seed=5, ahead=2) as paired:
        a = run(paired, CFM(LinearPath(), coupling=independent).loss, 30)
    b = run(PairedBatches(draw, independent, seed=5, ahead=0),
            CFM(LinearPath(), coupling=ExactOT()).loss, 30)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert a.losses == b.losses


def test_a_resumed_run_continues_with_the_batches_it_stopped_at(tmp_path):
    loss = CFM(LinearPath()).loss
    with PairedBatches(draw, ExactOT(), seed=5) as paired:
        whole = run(paired, loss, 20)
    ckpt = tmp_path / "run.pt"
    with PairedBatches(draw, ExactOT(), seed=5) as paired:
        run(paired, loss, 10, ckpt)
    with PairedBatches(draw, ExactOT(), seed=5) as paired:  # a new process would start at 0
        resumed = run(paired, loss, 20, ckpt)
    assert resumed.steps_run == 10 and resumed.losses == whole.losses
    for pa, pb in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(pa, pb)


def test_bad_arguments():
    with pytest.raises(ValueError, match="ahead"):
        PairedBatches(draw, independent, seed=0, ahead=-1)
    with pytest.raises(ValueError, match="seed"):
        batch_generator(-1, 0)
