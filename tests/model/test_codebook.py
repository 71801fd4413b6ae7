"""The opt-in codebook options (model/codebook.py) and their use by the trainer."""
import torch

from model.codebook import kmeans_codebook, restart_dead_codes
from model.lma import VectorQuantizer


def _adam_with_state(parameter: torch.nn.Parameter) -> torch.optim.Adam:
    optimizer = torch.optim.Adam([parameter], lr=0.1)
    parameter.grad = torch.ones_like(parameter)
    optimizer.step()  # moments are now non-zero in every row
    return optimizer


def test_a_dead_code_restarts_at_a_batch_vector_and_its_moments_are_reset():
    codebook = torch.nn.Parameter(torch.tensor([[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]]))
    optimizer = _adam_with_state(codebook)
    before = codebook.detach().clone()
    vectors = torch.tensor([[1.0, 2.0], [3.0, 4.0], [-1.0, 0.5]])
    usage = torch.tensor([7.0, 0.0, 3.0])  # code 1 was chosen by no transition
    restarted = restart_dead_codes(codebook, usage, vectors, torch.Generator().manual_seed(0), optimizer=optimizer)
    assert restarted == [1]
    assert any(torch.equal(codebook[1].detach(), vector) for vector in vectors)  # now where a transition is
    assert torch.equal(codebook[[0, 2]].detach(), before[[0, 2]])  # live codes untouched
    state = optimizer.state[codebook]
    assert torch.equal(state["exp_avg"][1], torch.zeros(2)) and torch.equal(state["exp_avg_sq"][1], torch.zeros(2))
    assert (state["exp_avg"][[0, 2]] != 0).all() and (state["exp_avg_sq"][[0, 2]] != 0).all()
    # The restarted code is then the nearest one for the vector it came from.
    quantizer = VectorQuantizer(3, 2, beta=0.25, loss_form="authors")
    with torch.no_grad():
        quantizer.codebook.copy_(codebook)
    picked = [i for i, vector in enumerate(vectors) if torch.equal(codebook[1].detach(), vector)][0]
    assert quantizer(vectors[picked:picked + 1]).ids.item() == 1


def test_restart_of_several_codes_draws_distinct_vectors_and_nothing_when_all_live():
    codebook = torch.nn.Parameter(torch.zeros(4, 3))
    vectors = torch.arange(15.0).reshape(5, 3)
    restarted = restart_dead_codes(codebook, torch.tensor([0.0, 0.0, 0.0, 2.0]), vectors,
                                   torch.Generator().manual_seed(1))
    assert restarted == [0, 1, 2]
    rows = {tuple(row.tolist()) for row in codebook[:3].detach()}
    assert len(rows) == 3 and rows <= {tuple(v.tolist()) for v in vectors}
    assert restart_dead_codes(codebook, torch.ones(4), vectors, torch.Generator().manual_seed(1)) == []


def test_kmeans_initialisation_puts_one_code_on_each_cluster():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(20)
    vectors = centres[labels] + 0.1 * torch.randn(60, 2, generator=generator)
    codebook = torch.nn.Parameter(torch.zeros(3, 2))
    optimizer = _adam_with_state(codebook)
    ids = kmeans_codebook(codebook, vectors, torch.Generator().manual_seed(3), optimizer=optimizer)
    for cluster in range(3):  # every cluster is one code, its centre the cluster mean
        assert ids[labels == cluster].unique().numel() == 1
        code = ids[labels == cluster][0]
        assert torch.allclose(codebook[code].detach(), vectors[labels == cluster].mean(0), atol=1e-5)
    assert ids.unique().numel() == 3
    assert torch.equal(optimizer.state[codebook]["exp_avg"], torch.zeros(3, 2))


def test_kmeans_with_fewer_distinct_vectors_than_codes_still_fills_every_row():
    codebook = torch.nn.Parameter(torch.zeros(4, 2))
    vectors = torch.tensor([[1.0, 1.0]] * 5)
    kmeans_codebook(codebook, vectors, torch.Generator().manual_seed(0))
    assert torch.isfinite(codebook).all() and torch.allclose(codebook.detach(), torch.ones(4, 2), atol=0.1)


def test_commitment_scales_the_pull_on_z_only():
    vectors = torch.tensor([[0.9, 0.2], [0.1, 1.4]], requires_grad=True)
    gradients = []
    for commitment in (1.0, 0.25):
        quantizer = VectorQuantizer(2, 2, beta=0.25, loss_form="authors", commitment=commitment)
        with torch.no_grad():
            quantizer.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        vectors.grad = None
        quantizer(vectors).vq_loss.backward()
        gradients.append((vectors.grad.clone(), quantizer.codebook.grad.clone()))
    assert torch.allclose(gradients[1][0], 0.25 * gradients[0][0])  # z's pull scaled
    assert torch.allclose(gradients[1][1], gradients[0][1])  # the codebook's unchanged
