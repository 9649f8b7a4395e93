"""Each loss against a plain Python loop over the definition, in float32 and float64."""
import math

import pytest
import torch

from projhead.losses import LOSSES, ClipLoss, LossError, SamToNeLoss, SigLipLoss, get_loss


def _data(dtype, b=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=1)
    c = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=1)
    ids = torch.tensor([0, 1, 2, 1, 3, 4, 0])[:b]  # rows 1/3 and 0/6 share a gold context
    return q, c, ids


def _dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b))


def loop_infonce(anchors, positives, same, scale, ids, same_weight=0.0):
    """-log softmax of the positive among the other side's rows (minus rows sharing the gold
    context) and, with same_weight > 0, the anchor side's other rows too."""
    total = 0.0
    n = len(anchors)
    for i in range(n):
        terms = []
        for j in range(n):
            if j == i or ids is None or ids[j] != ids[i]:
                terms.append(scale * _dot(anchors[i], positives[j]))
        if same_weight:
            for j in range(n):
                if j != i and (ids is None or ids[j] != ids[i]):
                    terms.append(scale * _dot(anchors[i], same[j]) + math.log(same_weight))
        pos = scale * _dot(anchors[i], positives[i])
        total += -(pos - math.log(sum(math.exp(t) for t in terms)))
    return total / n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_ids", [False, True])
def test_clip_matches_loop(dtype, with_ids):
    q, c, ids = _data(dtype)
    ids = ids if with_ids else None
    loss = ClipLoss(init_temperature=0.1).to(dtype)
    got = float(loss(q, c, ids).detach())
    scale = float(loss.logit_scale.detach().exp())  # log(10) rounded to the parameter's float32 start
    want = (loop_infonce(q, c, None, scale, ids) + loop_infonce(c, q, None, scale, ids)) / 2
    assert got == pytest.approx(want, rel=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_samtone_matches_loop(dtype, weight):
    q, c, ids = _data(dtype)
    loss = SamToNeLoss(init_temperature=0.1, same_tower_weight=weight).to(dtype)
    got = float(loss(q, c, ids).detach())
    scale = float(loss.logit_scale.detach().exp())
    want = (loop_infonce(q, c, q, scale, ids, weight) + loop_infonce(c, q, c, scale, ids, weight)) / 2
    assert got == pytest.approx(want, rel=1e-5 if dtype == torch.float32 else 1e-10)


def test_samtone_without_same_tower_term_is_clip():
    q, c, ids = _data(torch.float64)
    a = SamToNeLoss(init_temperature=0.07, same_tower_weight=0.0).double()(q, c, ids)
    b = ClipLoss(init_temperature=0.07).double()(q, c, ids)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_siglip_matches_loop(dtype):
    q, c, ids = _data(dtype)
    loss = SigLipLoss().to(dtype)
    got = float(loss(q, c, ids).detach())
    scale, bias = float(loss.logit_scale.detach().exp()), float(loss.logit_bias.detach())
    total = 0.0
    for i in range(len(q)):
        for j in range(len(c)):
            z = scale * _dot(q[i], c[j]) + bias
            y = 1.0 if ids[i] == ids[j] else -1.0
            total += math.log(1 + math.exp(-y * z))
    assert got == pytest.approx(total / len(q), rel=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_falls_on_aligned_pairs(name):
    torch.manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(64, 8), dim=1)
    w = torch.nn.Parameter(torch.randn(8, 8) * 0.1 + torch.eye(8) * 0.1)
    loss_fn = get_loss(name, init_temperature=0.1)
    opt = torch.optim.Adam([w] + list(loss_fn.parameters()), lr=0.05)
    ids = torch.arange(64)
    first = None
    for _ in range(100):
        q = torch.nn.functional.normalize(c @ w, dim=1)
        loss = loss_fn(q, c, ids)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_temperature_is_clamped_like_open_clip():
    loss = ClipLoss(init_temperature=0.001)
    loss.clamp_()
    assert loss.temperature == pytest.approx(0.01)
    assert not ClipLoss(learn_temperature=False).logit_scale.requires_grad


def test_unknown_loss():
    with pytest.raises(LossError, match="unknown loss 'nope'; choose from clip, samtone, siglip"):
        get_loss("nope")


@pytest.mark.parametrize("with_ids", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_chunked_clip_equals_plain_in_value_and_gradient(with_ids, chunk):
    q0, c0, ids = _data(torch.float64, b=7)
    ids = ids if with_ids else None
    out = {}
    for name, size in (("plain", None), ("chunked", chunk)):
        q, c = q0.clone().requires_grad_(), c0.clone().requires_grad_()
        loss_fn = ClipLoss(init_temperature=0.05, chunk_size=size).double()
        loss = loss_fn(q, c, ids)
        loss.backward()
        out[name] = (float(loss.detach()), q.grad, c.grad, loss_fn.logit_scale.grad)
    p, k = out["plain"], out["chunked"]
    assert k[0] == pytest.approx(p[0], rel=1e-12)
    for a, b in zip(p[1:], k[1:]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunked_clip_gradcheck():
    q, c, ids = _data(torch.float64, b=6)
    q.requires_grad_()
    c.requires_grad_()
    scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    from projhead.losses import _ChunkedClip

    assert torch.autograd.gradcheck(lambda a, b, s: _ChunkedClip.apply(a, b, s, ids[:6], 4), (q, c, scale))


def test_settings_a_loss_does_not_take_are_refused():
    with pytest.raises(LossError, match="loss 'samtone' does not take setting\\(s\\) \\['chunk_size'\\]"):
        get_loss("samtone", chunk_size=4)
