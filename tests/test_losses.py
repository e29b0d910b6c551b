"""ContrastiveLoss against hand computations, its masking, temperature, hard negatives, errors, and all-gather."""

from __future__ import annotations

import math
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from semcode.losses import ContrastiveLoss, LossOutput, text_keys

# Three unit vectors per side, in 2-D so the cosines can be written down by hand.
QUERIES = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
CODES = [[0.8, 0.6], [0.6, 0.8], [0.0, 1.0]]
# SIMILARITY[i][j] = QUERIES[i] . CODES[j]
SIMILARITY = [
    [0.8, 0.6, 0.0],
    [0.6, 0.8, 1.0],
    [0.96, 1.0, 0.8],
]


def tensors() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(QUERIES), torch.tensor(CODES)


def cross_entropy_by_hand(rows: list[list[float]], labels: list[int]) -> float:
    """Mean over rows of -log softmax(row)[label]; -inf entries contribute exp(-inf) = 0."""
    losses = []
    for row, label in zip(rows, labels, strict=True):
        log_sum_exp = math.log(sum(math.exp(x) for x in row if x != -math.inf))
        losses.append(log_sum_exp - row[label])
    return sum(losses) / len(losses)


def transpose(matrix: list[list[float]]) -> list[list[float]]:
    return [list(column) for column in zip(*matrix, strict=True)]


def scaled(matrix: list[list[float]], temperature: float) -> list[list[float]]:
    return [[x / temperature for x in row] for row in matrix]


def test_symmetric_loss_matches_hand_computation() -> None:
    temperature = 0.5
    logits = scaled(SIMILARITY, temperature)  # query i (row) against code j (column)
    query_to_code = cross_entropy_by_hand(logits, [0, 1, 2])
    code_to_query = cross_entropy_by_hand(transpose(logits), [0, 1, 2])
    # Row 0 by hand: logits [1.6, 1.2, 0.0], the positive 1.6.
    assert cross_entropy_by_hand([logits[0]], [0]) == pytest.approx(
        math.log(math.exp(1.6) + math.exp(1.2) + 1.0) - 1.6
    )

    out = ContrastiveLoss(temperature=temperature)(*tensors())

    assert isinstance(out, LossOutput)
    assert out.contrastive.item() == pytest.approx((query_to_code + code_to_query) / 2, rel=1e-6)
    assert out.total.item() == pytest.approx(out.contrastive.item())
    assert out.hard.item() == 0.0
    assert out.temperature == pytest.approx(temperature)


def test_one_sided_loss_is_query_to_code_only() -> None:
    temperature = 0.5
    logits = scaled(SIMILARITY, temperature)
    one_sided = ContrastiveLoss(temperature=temperature, symmetric=False)(*tensors())
    symmetric = ContrastiveLoss(temperature=temperature, symmetric=True)(*tensors())

    assert one_sided.contrastive.item() == pytest.approx(cross_entropy_by_hand(logits, [0, 1, 2]), rel=1e-6)
    assert symmetric.contrastive.item() != pytest.approx(one_sided.contrastive.item())


def test_duplicate_code_is_masked_exactly_like_that_entry() -> None:
    # Rows 0 and 2 hold the same code text: for query 0, code 2 is a correct answer, not a negative.
    temperature = 0.5
    code_texts = ["def add(a, b): return a + b", "def neg(x): return -x", "def add(a, b): return a + b"]
    query_texts = ["add two numbers", "negate", "sum of a and b"]
    code_keys, query_keys = text_keys(code_texts), text_keys(query_texts)
    assert code_keys[0] == code_keys[2] and code_keys[0] != code_keys[1]

    masked = [row[:] for row in scaled(SIMILARITY, temperature)]
    masked[0][2] = masked[2][0] = -math.inf  # pair 0 vs pair 2, in both directions
    expected = (
        cross_entropy_by_hand(masked, [0, 1, 2]) + cross_entropy_by_hand(transpose(masked), [0, 1, 2])
    ) / 2

    loss = ContrastiveLoss(temperature=temperature)
    with_keys = loss(*tensors(), query_keys=query_keys, code_keys=code_keys)
    without_keys = loss(*tensors())

    assert with_keys.contrastive.item() == pytest.approx(expected, rel=1e-6)
    assert with_keys.contrastive.item() < without_keys.contrastive.item()
    # Distinct keys mask nothing.
    distinct = loss(*tensors(), query_keys=query_keys, code_keys=text_keys(["a", "b", "c"]))
    assert distinct.contrastive.item() == pytest.approx(without_keys.contrastive.item())


def test_masking_never_touches_the_positive() -> None:
    # Every row has the same query: all off-diagonal entries go, each row keeps only its positive.
    out = ContrastiveLoss(temperature=0.5)(*tensors(), query_keys=text_keys(["same"] * 3))
    assert out.contrastive.item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(out.total)


def test_hard_negative_term_matches_hand_computation() -> None:
    temperature = 0.5
    query, code = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.8, 0.6], [0.6, 0.8]])
    hard_negatives = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]],  # row 0: cosines with query 0 are 1.0, 0.0, 0.6
            [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]],  # row 1: all three masked out below
        ]
    )
    mask = torch.tensor([[True, True, False], [False, False, False]])
    # Only row 0 has hard negatives: logits [positive 0.8, 1.0, 0.0] / T (the third is masked).
    expected_hard = cross_entropy_by_hand([[0.8 / temperature, 1.0 / temperature, 0.0]], [0])
    expected_contrastive = ContrastiveLoss(temperature=temperature)(query, code).contrastive.item()

    loss = ContrastiveLoss(temperature=temperature, hard_negative_weight=0.25)
    out = loss(query, code, hard_negative_emb=hard_negatives, hard_negative_mask=mask)

    assert out.hard.item() == pytest.approx(expected_hard, rel=1e-6)
    assert out.contrastive.item() == pytest.approx(expected_contrastive, rel=1e-6)
    assert out.total.item() == pytest.approx(expected_contrastive + 0.25 * expected_hard, rel=1e-6)

    # Weight 0: the hard term is reported but not added.
    unweighted = ContrastiveLoss(temperature=temperature)(
        query, code, hard_negative_emb=hard_negatives, hard_negative_mask=mask
    )
    assert unweighted.hard.item() == pytest.approx(expected_hard, rel=1e-6)
    assert unweighted.total.item() == pytest.approx(expected_contrastive, rel=1e-6)

    # No row with a valid hard negative: the term is 0.
    none_valid = loss(
        query, code, hard_negative_emb=hard_negatives, hard_negative_mask=torch.zeros(2, 3).bool()
    )
    assert none_valid.hard.item() == 0.0


def kl_by_hand(teacher_rows: list[list[float]], student_rows: list[list[float]]) -> float:
    """Mean over rows of sum_j p_j log(p_j / q_j), p = softmax(teacher row), q = softmax(student row)."""
    total = 0.0
    for teacher, student in zip(teacher_rows, student_rows, strict=True):
        p = [math.exp(x) / sum(math.exp(y) for y in teacher) for x in teacher]
        q = [math.exp(x) / sum(math.exp(y) for y in student) for x in student]
        total += sum(pj * math.log(pj / qj) for pj, qj in zip(p, q, strict=True))
    return total / len(teacher_rows)


def test_distillation_term_matches_hand_computation() -> None:
    temperature = 0.5
    # The teacher: every query equally close to every code except its own (a "clean" diagonal).
    teacher_queries = torch.eye(3)
    teacher_codes = torch.eye(3)
    teacher_logits = scaled([[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)], temperature)
    student_logits = scaled(SIMILARITY, temperature)
    expected = (
        kl_by_hand(teacher_logits, student_logits)
        + kl_by_hand(transpose(teacher_logits), transpose(student_logits))
    ) / 2

    plain = ContrastiveLoss(temperature=temperature)(*tensors())
    loss = ContrastiveLoss(temperature=temperature, distill_weight=0.3)
    out = loss(*tensors(), teacher_query_emb=teacher_queries, teacher_code_emb=teacher_codes)
    assert out.distill.item() == pytest.approx(expected, rel=1e-5)
    assert out.contrastive.item() == pytest.approx(plain.contrastive.item(), rel=1e-6)
    assert out.total.item() == pytest.approx(plain.total.item() + 0.3 * expected, rel=1e-5)
    assert plain.distill.item() == 0.0  # no teacher, no term
    one_sided = ContrastiveLoss(temperature=temperature, symmetric=False, distill_weight=1.0)(
        *tensors(), teacher_query_emb=teacher_queries, teacher_code_emb=teacher_codes
    )
    assert one_sided.distill.item() == pytest.approx(kl_by_hand(teacher_logits, student_logits), rel=1e-5)


def test_distillation_temperature_of_its_own_and_a_learnable_temperature_left_alone() -> None:
    teacher = {"teacher_query_emb": torch.eye(3), "teacher_code_emb": torch.eye(3)}
    teacher_logits = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]  # at temperature 1
    expected = (
        kl_by_hand(teacher_logits, SIMILARITY) + kl_by_hand(transpose(teacher_logits), transpose(SIMILARITY))
    ) / 2
    loss = ContrastiveLoss(temperature=0.5, distill_weight=1.0, distill_temperature=1.0)
    assert loss(*tensors(), **teacher).distill.item() == pytest.approx(expected, rel=1e-5)
    # The KL does not train a learnable temperature: its gradient comes from the contrastive term only.
    learnable = ContrastiveLoss(temperature=0.5, learnable_temperature=True, distill_weight=1.0)
    query, code = tensors()
    learnable(query.requires_grad_(True), code, **teacher).distill.backward()
    assert query.grad is not None and learnable.log_scale.grad is None


def test_distillation_is_zero_for_a_student_equal_to_its_teacher_and_pulls_towards_it() -> None:
    query, code = tensors()
    query, code = query.clone().requires_grad_(True), code.clone().requires_grad_(True)
    loss = ContrastiveLoss(temperature=0.5, distill_weight=1.0)
    same = loss(query, code, teacher_query_emb=query.detach(), teacher_code_emb=code.detach())
    assert same.distill.item() == pytest.approx(0.0, abs=1e-7)
    same.distill.backward()
    assert query.grad.abs().max().item() < 1e-6  # a minimum: no pull anywhere
    # The teacher embeddings get no gradient even when they require one (they are detached).
    teacher_query = torch.eye(3, 2).requires_grad_(True)
    out = loss(query, code, teacher_query_emb=teacher_query, teacher_code_emb=torch.eye(3, 2))
    out.total.backward()
    assert teacher_query.grad is None


def test_distillation_ignores_masked_false_negatives() -> None:
    query, code = tensors()
    teacher = dict(teacher_query_emb=torch.eye(3), teacher_code_emb=torch.eye(3))
    loss = ContrastiveLoss(temperature=0.5, distill_weight=1.0)
    # Every row has the same query: only the positive is left in each row, so both distributions are
    # one-hot on it and the KL is exactly 0 (and finite, although the masked entries are -inf).
    out = loss(query, code, query_keys=text_keys(["same"] * 3), **teacher)
    assert out.distill.item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(out.total)


def test_learnable_temperature_is_clamped_and_gets_gradient() -> None:
    loss = ContrastiveLoss(
        temperature=0.05, learnable_temperature=True, min_temperature=0.02, max_temperature=0.5
    )
    assert loss.log_scale.requires_grad
    assert loss.temperature == pytest.approx(0.05)

    out = loss(*tensors())
    out.total.backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad.abs().item() > 0

    with torch.no_grad():
        loss.log_scale.fill_(math.log(1 / 1e-4))  # T = 1e-4, below the bound
    assert loss.temperature == pytest.approx(0.02)
    assert loss(*tensors()).temperature == pytest.approx(0.02)
    with torch.no_grad():
        loss.log_scale.fill_(math.log(1 / 10.0))  # T = 10, above the bound
    assert loss.temperature == pytest.approx(0.5)


def test_fixed_temperature_has_no_parameters() -> None:
    loss = ContrastiveLoss(temperature=0.1)
    assert list(loss.parameters()) == []
    assert loss.state_dict() == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_temperature": 0.0}, "min_temperature must be > 0"),
        ({"min_temperature": 0.5, "max_temperature": 0.1}, "must be <= max_temperature"),
        ({"temperature": 2.0}, "outside"),
        ({"temperature": 0.001, "learnable_temperature": True}, "outside"),
        ({"hard_negative_weight": -0.1}, "hard_negative_weight must be >= 0"),
        ({"distill_weight": -1.0}, "distill_weight must be >= 0"),
        ({"distill_temperature": -0.1}, "distill_temperature must be >= 0"),
    ],
)
def test_invalid_settings_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContrastiveLoss(**kwargs)


def test_invalid_inputs_raise() -> None:
    loss = ContrastiveLoss()
    query, code = torch.randn(4, 8), torch.randn(4, 8)
    keys = torch.arange(4)
    cases = [
        ((torch.randn(4, 8, 1), code), {}, "query_emb must be 2-D"),
        ((query, torch.randn(8)), {}, "code_emb must be 2-D"),
        ((query, torch.randn(3, 8)), {}, "same shape"),
        ((query, torch.randn(4, 6)), {}, "same shape"),
        ((query.long(), code.long()), {}, "floating point"),
        ((query[:1], code[:1]), {}, "at least 2 pairs"),
        ((query, code), {"query_keys": torch.arange(3)}, r"query_keys must have shape \[4\]"),
        ((query, code), {"code_keys": keys.int()}, "code_keys must be int64"),
        (
            (query, code),
            {"hard_negative_emb": torch.randn(4, 8)},
            r"hard_negative_emb must have shape \[4, H, 8\]",
        ),
        ((query, code), {"hard_negative_emb": torch.randn(3, 2, 8)}, "hard_negative_emb must have shape"),
        ((query, code), {"hard_negative_emb": torch.randn(4, 2, 7)}, "hard_negative_emb must have shape"),
        (
            (query, code),
            {"hard_negative_emb": torch.randn(4, 2, 8), "hard_negative_mask": torch.ones(4, 3).bool()},
            r"hard_negative_mask must have shape \[4, 2\]",
        ),
        (
            (query, code),
            {"hard_negative_emb": torch.randn(4, 2, 8), "hard_negative_mask": torch.ones(4, 2)},
            "hard_negative_mask must be bool",
        ),
        ((query, code), {"hard_negative_mask": torch.ones(4, 2).bool()}, "without hard_negative_emb"),
        ((query, code), {"teacher_query_emb": torch.randn(4, 8)}, "must be given together"),
        (
            (query, code),
            {"teacher_query_emb": torch.randn(3, 8), "teacher_code_emb": torch.randn(3, 8)},
            r"teacher embeddings must both have shape \[4, D\]",
        ),
        (
            (query, code),
            {"teacher_query_emb": torch.randn(4, 8), "teacher_code_emb": torch.randn(4, 6)},
            "teacher embeddings must both have shape",
        ),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            loss(*args, **kwargs)


def test_text_keys_are_stable_63_bit_hashes() -> None:
    keys = text_keys(["def f(): pass", "def g(): pass", "def f(): pass", ""])
    assert keys.dtype == torch.int64 and keys.shape == (4,)
    assert keys[0] == keys[2] and keys[0] != keys[1]
    assert bool((keys >= 0).all())
    # Fixed across processes, runs and versions (blake2b, not Python's salted hash()): saved keys stay valid.
    assert text_keys(["def f(): pass", ""]).tolist() == [3205384330304608103, 3797230976420062948]


# ---------------------------------------------------------------------------------------------
# Across ranks: a real 2-process gloo group

WORLD_SIZE = 2
LOCAL_BATCH = 3
DIM = 5
HARD_PER_ROW = 2


def global_batch() -> dict[str, torch.Tensor]:
    """The same global batch in every process: 6 pairs, with a code repeated across the two ranks."""
    generator = torch.Generator().manual_seed(0)
    n = WORLD_SIZE * LOCAL_BATCH
    code_keys = torch.tensor([10, 11, 12, 13, 10, 15])  # pair 0 (rank 0) and pair 4 (rank 1) share code
    return {
        "query": F.normalize(torch.randn(n, DIM, generator=generator), dim=-1),
        "code": F.normalize(torch.randn(n, DIM, generator=generator), dim=-1),
        "hard": F.normalize(torch.randn(n, HARD_PER_ROW, DIM, generator=generator), dim=-1),
        "teacher_query": F.normalize(torch.randn(n, DIM, generator=generator), dim=-1),
        "teacher_code": F.normalize(torch.randn(n, DIM, generator=generator), dim=-1),
        "query_keys": torch.arange(100, 100 + n),
        "code_keys": code_keys,
    }


def new_loss() -> ContrastiveLoss:
    return ContrastiveLoss(
        temperature=0.1, learnable_temperature=True, hard_negative_weight=0.5, distill_weight=0.7
    )


def run_loss(loss: ContrastiveLoss, batch: dict[str, torch.Tensor], rows: slice) -> tuple[torch.Tensor, ...]:
    """Loss and gradients (query, code, hard negatives, temperature) for the given rows of the batch."""
    query = batch["query"][rows].clone().requires_grad_(True)
    code = batch["code"][rows].clone().requires_grad_(True)
    hard = batch["hard"][rows].clone().requires_grad_(True)
    out = loss(
        query,
        code,
        batch["query_keys"][rows],
        batch["code_keys"][rows],
        hard,
        teacher_query_emb=batch["teacher_query"][rows],
        teacher_code_emb=batch["teacher_code"][rows],
    )
    out.total.backward()
    return out.total.detach(), query.grad, code.grad, hard.grad, loss.log_scale.grad


def gather_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        torch.save(run_loss(new_loss(), global_batch(), rows), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_all_gather_equals_single_process_on_the_global_batch() -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(gather_worker, args=(free_port(), out_dir), nprocs=WORLD_SIZE, join=True)
        ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD_SIZE)]

    full_loss, full_query, full_code, full_hard, full_temperature = run_loss(
        new_loss(), global_batch(), slice(None)
    )
    # Each rank's loss is the mean over its own rows; their mean is the global-batch loss.
    assert torch.stack([r[0] for r in ranks]).mean().item() == pytest.approx(full_loss.item(), rel=1e-5)
    # all_gather's backward sums over ranks, so a rank's gradient is WORLD_SIZE x its share of the
    # global gradient; data-parallel averaging divides it back.
    for rank, (_, query_grad, code_grad, hard_grad, _) in enumerate(ranks):
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        torch.testing.assert_close(query_grad / WORLD_SIZE, full_query[rows])
        torch.testing.assert_close(code_grad / WORLD_SIZE, full_code[rows])
        torch.testing.assert_close(hard_grad / WORLD_SIZE, full_hard[rows])
    torch.testing.assert_close(torch.stack([r[4] for r in ranks]).mean(), full_temperature)


def test_teacher_false_negatives_are_hidden_from_the_contrastive_term() -> None:
    """The teacher scores row 0's query closer to code 2 than to its own code 0, and code 2 closer to
    query 0 than to its own query 2: those two candidates leave their rows (the mask covers both
    directions), as if the batch did not hold them for those rows."""
    torch.manual_seed(0)
    query = F.normalize(torch.randn(3, 8), dim=-1)
    code = F.normalize(torch.randn(3, 8), dim=-1)
    teacher_query = torch.eye(3, 4)  # [3, 4]: query i points at axis i
    teacher_code = torch.eye(3, 4)
    teacher_code[2] = torch.tensor([1.0, 0.0, 0.2, 0.0])  # code 2 looks like row 0's answer to the teacher
    teacher_code[0] = torch.tensor([0.9, 0.0, 0.0, 0.1])
    loss = ContrastiveLoss(temperature=0.1, symmetric=False, teacher_false_negatives=True)
    masked = loss(query, code, teacher_query_emb=teacher_query, teacher_code_emb=teacher_code)
    logits = (query @ code.T) / 0.1  # [3, 3]
    logits[0, 2] = float("-inf")  # query 0 -> code 2: above code 0 for the teacher
    logits[2, 0] = float("-inf")  # code 2 -> query 0: above query 2 for the teacher
    expected = F.cross_entropy(logits, torch.arange(3))
    assert masked.contrastive.item() == pytest.approx(expected.item(), rel=1e-5)
    plain = ContrastiveLoss(temperature=0.1, symmetric=False)(query, code)
    assert plain.contrastive.item() != pytest.approx(expected.item(), rel=1e-5)


def test_held_out_loss_is_the_contrastive_term_batch_by_batch():
    from semcode.losses import ContrastiveLoss, held_out_contrastive_loss

    torch.manual_seed(0)
    queries = F.normalize(torch.randn(10, 8), dim=1)
    codes = F.normalize(queries + 0.3 * torch.randn(10, 8), dim=1)
    plain = ContrastiveLoss(temperature=0.1, gather_across_ranks=False)
    # One batch: exactly the training term on those rows.
    assert held_out_contrastive_loss(queries, codes, 0.1, batch_size=10) == pytest.approx(
        float(plain(queries, codes).contrastive)
    )
    # Batches of 4, 4, 2 rows: their terms averaged by rows; a last batch of one row is left out.
    parts = [float(plain(queries[s : s + 4], codes[s : s + 4]).contrastive) for s in (0, 4, 8)]
    assert held_out_contrastive_loss(queries, codes, 0.1, batch_size=4) == pytest.approx(
        (4 * parts[0] + 4 * parts[1] + 2 * parts[2]) / 10
    )
    assert held_out_contrastive_loss(queries[:9], codes[:9], 0.1, batch_size=4) == pytest.approx(
        (4 * parts[0] + 4 * parts[1]) / 8
    )
    # Better-aligned pairs score lower; fewer than two rows have nothing to contrast.
    assert held_out_contrastive_loss(queries, queries, 0.1, 10) < held_out_contrastive_loss(
        queries, codes, 0.1, 10
    )
    assert math.isnan(held_out_contrastive_loss(queries[:1], codes[:1], 0.1, 10))
