"""Each loss against a plain Python loop over the definition, in float32 and float64."""
import math

import pytest
import torch

from projhead.losses import ClipLoss, LossError, SamToNeLoss, SigLipLoss, get_loss


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


@pytest.mark.parametrize("name", ["clip", "samtone", "siglip"])
def test_every_pair_loss_falls_on_aligned_pairs(name):
    torch.manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(64, 8), dim=1)
    w = torch.nn.Parameter(torch.randn(8, 8) * 0.1 + torch.eye(8) * 0.1)
    loss_fn = get_loss(name, **({} if name == "siglip" else {"init_temperature": 0.1}))  # siglip: its own start
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
    loss = ClipLoss(init_temperature=0.02)
    with torch.no_grad():
        loss.logit_scale.fill_(7.0)  # learned past the largest scale, 100
    loss.clamp_()
    assert loss.temperature == pytest.approx(0.01)
    with pytest.raises(LossError, match="temperature must be in"):
        ClipLoss(init_temperature=0.001)  # a start outside it is refused, not clamped after a step
    assert not ClipLoss(learn_temperature=False).logit_scale.requires_grad


def test_unknown_loss():
    with pytest.raises(LossError, match="unknown loss 'nope'; choose from clip, samtone, siglip, distill, byol"):
        get_loss("nope")


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("with_ids", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_chunked_clip_equals_plain_in_value_and_gradient(with_ids, chunk, symmetric):
    q0, c0, ids = _data(torch.float64, b=7)
    ids = ids if with_ids else None
    out = {}
    for name, size in (("plain", None), ("chunked", chunk)):
        q, c = q0.clone().requires_grad_(), c0.clone().requires_grad_()
        loss_fn = ClipLoss(init_temperature=0.05, chunk_size=size, symmetric=symmetric).double()
        loss = loss_fn(q, c, ids)
        loss.backward()
        out[name] = (float(loss.detach()), q.grad, c.grad, loss_fn.logit_scale.grad)
    p, k = out["plain"], out["chunked"]
    assert k[0] == pytest.approx(p[0], rel=1e-12)
    for a, b in zip(p[1:], k[1:]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("symmetric", [True, False])
def test_chunked_clip_gradcheck(symmetric):
    q, c, ids = _data(torch.float64, b=6)
    q.requires_grad_()
    c.requires_grad_()
    scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    from projhead.losses import _ChunkedClip

    ids = ids[:6]
    assert torch.autograd.gradcheck(lambda a, b, s: _ChunkedClip.apply(a, b, s, (ids, ids, None), 4, symmetric),
                                    (q, c, scale))


def test_one_direction_clip_is_the_query_to_context_cross_entropy():
    torch.manual_seed(3)
    q, c = (torch.nn.functional.normalize(torch.randn(9, 5, dtype=torch.float64), dim=1) for _ in range(2))
    loss_fn = ClipLoss(init_temperature=0.1, symmetric=False).double()
    logits = q @ c.T * float(loss_fn.logit_scale.detach().exp())
    want = -torch.log_softmax(logits, dim=1).diagonal().mean()  # each query picks its context; no column term
    assert float(loss_fn(q, c).detach()) == pytest.approx(float(want), rel=1e-10)
    both = (want - torch.log_softmax(logits, dim=0).diagonal().mean()) / 2
    assert float(ClipLoss(init_temperature=0.1).double()(q, c).detach()) == pytest.approx(float(both), rel=1e-10)
    with pytest.raises(LossError, match="symmetric must be true or false, not 'no'"):
        ClipLoss(symmetric="no")


def test_query_side_heads_train_the_query_to_context_half():
    """The trainer builds the clip loss one-directional for heads whose contexts cannot move,
    symmetric for the others, and a symmetric setting asked for wins."""
    from projhead.config import HeadConfig, TrainConfig
    from projhead.train import make_loss

    assert make_loss(TrainConfig(), HeadConfig(towers="query")).symmetric is False
    assert make_loss(TrainConfig(), HeadConfig(towers="separate")).symmetric is True
    assert make_loss(TrainConfig()).symmetric is True
    assert make_loss(TrainConfig(loss_settings={"symmetric": True}), HeadConfig(towers="query")).symmetric is True
    assert make_loss(TrainConfig(loss="samtone"), HeadConfig(towers="query")).symmetric is True  # its own definition
    assert make_loss(TrainConfig(), HeadConfig(kind="dialog", towers="query")).symmetric is True  # measured so


def test_settings_a_loss_does_not_take_are_refused():
    with pytest.raises(LossError, match="loss 'samtone' does not take setting\\(s\\) \\['chunk_size'\\]"):
        get_loss("samtone", chunk_size=4)


# -- mined hard negatives, silver rows, distillation, BYOL ---------------------------------

def _with_negatives(dtype, b=7, n=2, d=5, seed=1):
    """A batch with n mined negatives per row: row 2's second negative is row 4's gold
    context (a false negative for row 4), row 5 has one padding slot, and rows 0 and 6 are
    the same query (a silver pair) with different contexts."""
    q, c, _ = _data(dtype, b, d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.tensor([0, 1, 2, 1, 3, 4, 5])[:b]
    qids = torch.tensor([0, 1, 2, 3, 4, 5, 0])[:b]
    q[6] = q[0]
    negs = torch.nn.functional.normalize(torch.randn(b * n, d, generator=g, dtype=dtype), dim=1)
    neg_ids = torch.arange(10, 10 + b * n).reshape(b, n)
    neg_ids[2, 1] = 3
    negs[2 * n + 1] = c[4]
    neg_ids[5, 1] = -1
    return q, c, ids, qids, negs, neg_ids


def loop_candidates(q, cand, ctx, col_ids, qids, scale, i, b):
    """Logits of row i over the candidate columns it may count: its own column, and every
    column that is not padding, not its gold context, not a row of its query."""
    terms = []
    for j in range(len(cand)):
        if j != i:
            if col_ids[j] < 0 or col_ids[j] == ctx[i]:
                continue
            if j < b and qids is not None and qids[j] == qids[i]:
                continue
        terms.append(scale * _dot(q[i], cand[j]))
    return terms


def loop_clip_with_negatives(q, c, ctx, qids, negs, neg_ids, scale):
    b = len(q)
    cand = list(c) + list(negs)
    col_ids = [int(x) for x in ctx] + [int(x) for x in neg_ids.reshape(-1)]
    row = col = 0.0
    for i in range(b):
        terms = loop_candidates(q, cand, ctx, col_ids, qids, scale, i, b)
        row += -(scale * _dot(q[i], c[i]) - math.log(sum(math.exp(t) for t in terms)))
        terms = loop_candidates(c, list(q), ctx, [int(x) for x in ctx], qids, scale, i, b)
        col += -(scale * _dot(c[i], q[i]) - math.log(sum(math.exp(t) for t in terms)))
    return (row / b + col / b) / 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_with_negatives_and_silver_rows_matches_loop(dtype):
    q, c, ids, qids, negs, neg_ids = _with_negatives(dtype)
    loss = ClipLoss(init_temperature=0.1).to(dtype)
    got = float(loss(q, c, ids, negatives=negs, negative_ids=neg_ids, query_ids=qids).detach())
    want = loop_clip_with_negatives(q, c, ids, qids, negs, neg_ids, float(loss.logit_scale.detach().exp()))
    assert got == pytest.approx(want, rel=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_chunked_clip_with_negatives_equals_plain(chunk, symmetric):
    q0, c0, ids, qids, n0, neg_ids = _with_negatives(torch.float64)
    out = {}
    for name, size in (("plain", None), ("chunked", chunk)):
        q, c, negs = q0.clone().requires_grad_(), c0.clone().requires_grad_(), n0.clone().requires_grad_()
        loss_fn = ClipLoss(init_temperature=0.05, chunk_size=size, symmetric=symmetric).double()
        loss = loss_fn(q, c, ids, negatives=negs, negative_ids=neg_ids, query_ids=qids)
        loss.backward()
        out[name] = (float(loss.detach()), q.grad, c.grad, negs.grad, loss_fn.logit_scale.grad)
    p, k = out["plain"], out["chunked"]
    assert k[0] == pytest.approx(p[0], rel=1e-12)
    for a, b in zip(p[1:], k[1:]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samtone_with_negatives_matches_loop(dtype):
    q, c, ids, qids, negs, neg_ids = _with_negatives(dtype)
    loss = SamToNeLoss(init_temperature=0.1, same_tower_weight=1.0).to(dtype)
    got = float(loss(q, c, ids, negatives=negs, negative_ids=neg_ids, query_ids=qids).detach())
    scale = float(loss.logit_scale.detach().exp())
    b = len(q)
    cand = list(c) + list(negs)
    col_ids = [int(x) for x in ids] + [int(x) for x in neg_ids.reshape(-1)]
    total = 0.0
    for anchors, cands, cids, same in ((q, cand, col_ids, q), (c, list(q), [int(x) for x in ids], c)):
        part = 0.0
        for i in range(b):
            terms = loop_candidates(anchors, cands, ids, cids, qids, scale, i, b)
            for j in range(b):  # same tower: not itself, not its gold context, not its query
                if j != i and ids[j] != ids[i] and qids[j] != qids[i]:
                    terms.append(scale * _dot(anchors[i], same[j]))
            part += -(scale * _dot(anchors[i], cands[i]) - math.log(sum(math.exp(t) for t in terms)))
        total += part / b
    assert got == pytest.approx(total / 2, rel=1e-5 if dtype == torch.float32 else 1e-10)


def test_siglip_with_negatives_matches_loop():
    q, c, ids, qids, negs, neg_ids = _with_negatives(torch.float64)
    loss = SigLipLoss().double()
    got = float(loss(q, c, ids, negatives=negs, negative_ids=neg_ids, query_ids=qids).detach())
    scale, bias = float(loss.logit_scale.detach().exp()), float(loss.logit_bias.detach())
    b = len(q)
    cand = list(c) + list(negs)
    col_ids = [int(x) for x in ids] + [int(x) for x in neg_ids.reshape(-1)]
    total = 0.0
    for i in range(b):
        for j in range(len(cand)):
            if col_ids[j] < 0:
                continue
            pos = col_ids[j] == ids[i] or (j < b and qids[j] == qids[i])
            total += math.log(1 + math.exp(-(1 if pos else -1) * (scale * _dot(q[i], cand[j]) + bias)))
    assert got == pytest.approx(total / b, rel=1e-10)


def _loop_standardise(t, valid):
    vals = [x for x, v in zip(t, valid) if v]
    mean = sum(vals) / len(vals)
    std = max(math.sqrt(sum((x - mean) ** 2 for x in vals) / len(vals)), 1e-6)
    return [(x - mean) / std for x in t]


@pytest.mark.parametrize("mode", ["kl", "margin_mse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distill_matches_loop(mode, dtype):
    from projhead.losses import DistillLoss

    q, c, ids, qids, negs, neg_ids = _with_negatives(dtype, n=3)
    g = torch.Generator().manual_seed(5)
    teacher = torch.randn(len(q), 4, generator=g, dtype=dtype) * 3 + 7
    teacher[5, 2] = float("nan")  # the padding slot (row 5, negative 1) has no teacher score
    loss = DistillLoss(init_temperature=0.1, mode=mode, teacher_temperature=0.5).to(dtype)
    got = float(loss.distill(q, c, negs, neg_ids, teacher).detach())
    scale = float(loss.logit_scale.detach().exp())
    n = neg_ids.shape[1]
    total, count = 0.0, 0
    for i in range(len(q)):
        cands = [c[i]] + [negs[i * n + k] for k in range(n)]
        valid = [True] + [bool(neg_ids[i, k] >= 0) for k in range(n)]
        t = _loop_standardise([float(x) if v else 0.0 for x, v in zip(teacher[i], valid)], valid)
        s = [scale * _dot(q[i], x) for x in cands]
        if mode == "kl":
            zt = sum(math.exp(t[k] / 0.5) for k in range(n + 1) if valid[k])
            zs = sum(math.exp(s[k]) for k in range(n + 1) if valid[k])
            total += sum(math.exp(t[k] / 0.5) / zt * (t[k] / 0.5 - math.log(zt) - s[k] + math.log(zs))
                         for k in range(n + 1) if valid[k])
            count += 1
        else:
            for k in range(1, n + 1):
                if valid[k]:
                    total += ((s[0] - s[k]) - (t[0] - t[k])) ** 2
                    count += 1
    assert got == pytest.approx(total / count, rel=1e-4 if dtype == torch.float32 else 1e-9)


def _tiny_head(towers="separate"):
    from projhead.heads import Head, HeadConfig

    torch.manual_seed(0)
    return Head(HeadConfig(kind="mlp", in_dim=8, hidden=16, towers=towers, init="random"))


@pytest.mark.parametrize("views", ["augment", "pair"])
def test_byol_target_moves_only_through_the_ema(views):
    from projhead.losses import Batch, ByolLoss

    head = _tiny_head()
    loss_fn = ByolLoss(tau=0.9, views=views, hidden=16)
    loss_fn.attach(head)
    opt = torch.optim.SGD([p for p in list(head.parameters()) + list(loss_fn.parameters()) if p.requires_grad],
                          lr=0.5)
    assert all(not p.requires_grad for p in loss_fn.target.parameters())
    x = torch.randn(32, 8)
    batch = Batch(q=x, c=x + 0.1 * torch.randn(32, 8))
    before = {k: v.clone() for k, v in loss_fn.target.state_dict().items()}
    loss, _, _ = loss_fn.batch_loss(head, batch)
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in loss_fn.target.parameters())
    for k, v in loss_fn.target.state_dict().items():  # the optimiser step left the target alone
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    online = {k: v.clone() for k, v in head.state_dict().items()}
    assert any(not torch.equal(online[k], before[k]) for k in online)  # while the head moved
    loss_fn.after_step(0.0)  # tau = tau0 at the start of the schedule
    assert loss_fn.tau == pytest.approx(0.9)
    for k, v in loss_fn.target.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * online[k])
    loss_fn.after_step(1.0)
    assert loss_fn.tau == pytest.approx(1.0)


def test_byol_learns_to_ignore_augmentations_without_collapsing():
    from projhead.losses import Batch, ByolLoss

    head = _tiny_head()
    loss_fn = ByolLoss(tau=0.99, hidden=32)
    loss_fn.attach(head)
    opt = torch.optim.Adam([p for p in list(head.parameters()) + list(loss_fn.parameters()) if p.requires_grad],
                           lr=3e-3)
    torch.manual_seed(1)
    data = torch.nn.functional.normalize(torch.randn(512, 8), dim=1)
    def spread():  # mean per-dimension std of the outputs, x sqrt(D): 0 when collapsed
        out = head.encode_queries(data.numpy())
        return float(out.std(0).mean() * math.sqrt(out.shape[1]))

    start = spread()
    losses = []
    for step in range(150):
        x = data[torch.randint(0, 512, (128,))]
        loss, _, _ = loss_fn.batch_loss(head, Batch(q=x, c=x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_fn.after_step(step / 150)
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) < 0.85 * sum(losses[:10])
    assert spread() > 0.5 * start


def test_distill_without_teacher_scores_says_what_to_do():
    from projhead.losses import Batch

    with pytest.raises(LossError, match="projhead mine --teacher"):
        get_loss("distill").batch_loss(_tiny_head(), Batch(q=torch.randn(4, 8), c=torch.randn(4, 8)))


def test_distill_called_on_embeddings_alone_refuses_instead_of_ignoring_the_teacher():
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    with pytest.raises(LossError, match="teacher scores"):
        get_loss("distill")(q, q, torch.arange(4))


@pytest.mark.parametrize("name", ["siglip", "byol"])
def test_a_temperature_is_refused_by_losses_without_one(name):
    with pytest.raises(LossError, match="does not take setting"):
        get_loss(name, init_temperature=0.1)


@pytest.mark.parametrize("towers, recorded", [("query", False), ("separate", True)])
def test_the_loss_direction_is_recorded_in_config_json(planted_cache, tmp_path, towers, recorded):
    """config.json says which halves of the clip loss trained the head, asked for or not."""
    import json

    import projhead

    path = planted_cache()
    projhead.train_head(path, projhead.HeadConfig(kind="linear", towers=towers), projhead.TrainConfig(epochs=1),
                        out=tmp_path / "h")
    training = json.loads((tmp_path / "h" / "config.json").read_text())["training"]
    assert training["loss_settings"]["symmetric"] is recorded
    assert training["loss"] == "clip"


@pytest.mark.parametrize("loss, settings, message", [
    ("clip", {"chunk_size": -4}, "chunk_size must be an integer >= 1 \\(or none\\)"),
    ("clip", {"chunk_size": 2.5}, "chunk_size must be an integer"),
    ("clip", {"init_temperature": "abc"}, "init_temperature must be a finite number > 0"),
    ("samtone", {"same_tower_weight": -1}, "same_tower_weight must be a finite number >= 0"),
    ("siglip", {"init_scale": 0}, "init_scale must be a finite number > 0"),
    ("clip", {"max_scale": 0}, "max_scale must be a finite number > 1"),
    ("byol", {"dim_dropout": 1}, "dim_dropout must be a finite number in \\[0, 1\\)"),
    ("byol", {"hidden": 0}, "hidden must be an integer >= 1"),
    ("distill", {"contrastive_weight": -1}, "contrastive_weight must be a finite number >= 0"),
    ("clip", {"learn_temperature": "yes"}, "learn_temperature must be true or false"),
    ("clip", {"init_temperature": 0.005}, "temperature must be in \\[0.01, 1\\]"),
    ("clip", {"init_temperature": 2.0, "learn_temperature": False}, "temperature must be in \\[0.01, 1\\]"),
])
def test_loss_settings_are_checked_where_they_are_given(loss, settings, message):
    """Wrong types and ranges are one clear error, not a traceback at the first batch or a run
    trained silently on another setting (a fixed temperature clamped after its first step)."""
    from projhead.config import LossError
    from projhead.losses import get_loss

    with pytest.raises(LossError, match=message):
        get_loss(loss, **settings)
    assert get_loss("clip", chunk_size=4, init_temperature=1).temperature == pytest.approx(1.0)


def test_a_temperature_given_twice_is_refused():
    from projhead.config import HeadConfig, TrainConfig, TrainError
    from projhead.loss_config import make_loss

    for cfg in (TrainConfig(init_temperature=0.1, loss_settings={"init_temperature": 0.03}),
                TrainConfig(learn_temperature=False, loss_settings={"learn_temperature": True})):
        with pytest.raises(TrainError, match="and --loss-setting .*: one or the other"):
            make_loss(cfg, HeadConfig())
