"""The contrastive loss for query/code pairs: symmetric in-batch InfoNCE, plus an optional hard-negative term.

Notation: B rows on this rank (pair i = query i with its code i), W ranks, N = W * B rows in the global
batch, D the embedding size, H hard negatives per row. Embeddings are expected L2-normalised (the
encoder does it), so a dot product is a cosine similarity; logits are ``cosine / temperature``.

- Contrastive term: query i must pick code i among the N codes of the global batch (cross entropy over
  a [B, N] logit matrix); symmetric (the default) also makes code i pick query i among the N queries,
  and averages the two directions.
- In-batch false negatives: the same code (or query) can appear in two rows, e.g. a function copied
  into several repositories. Given per-row keys (``text_keys`` of the query and code texts), an
  off-diagonal entry whose query key or code key equals the row's own is masked to -inf, so the model
  is not pushed away from a correct answer. The row's own positive is never masked.
- Hard-negative term: for each row with at least one valid hard negative, a separate cross entropy
  over [positive, its H hard negatives] (label 0). ``total = contrastive + hard_negative_weight * hard``.
  Both parts are reported. With weight 0 the hard term is still computed and reported (to monitor it)
  but does not train the model.
- Distillation term (optional, for fine-tuning): given a frozen teacher's embeddings of the same rows
  (the checkpoint training started from), KL(teacher || student) between the two in-batch score
  distributions of each row, over the same [B, N] cosines and masking, both divided by
  ``distill_temperature`` (0 = the contrastive temperature; a higher one, e.g. 0.2, also transfers
  how the teacher ranks the negatives among themselves, not only the positive's margin); both
  directions when symmetric. It keeps the ranking the starting model had learned from its own, broader data
  (e.g. web-style queries) while the contrastive term adapts it to this corpus: "learning without
  forgetting" on the scores rather than on the weights. ``total += distill_weight * distill``.
- Temperature: fixed, or learnable (stored as log(1/T), as CLIP does, and clamped to
  [min_temperature, max_temperature] in every forward; at a bound its gradient is zero).
- Across ranks: when torch.distributed is initialised with W > 1, embeddings (and keys) are gathered
  with torch.distributed.nn.functional.all_gather, which keeps gradients, so each rank scores its B
  rows against all N candidates, with labels offset by rank * B. Each rank's loss is the mean over
  its own rows; the mean over ranks (what data-parallel gradient averaging optimises) equals the loss
  of one process on the whole global batch, and so do the gradients. Every rank must pass the same B
  (drop the last incomplete batch). Hard negatives stay local: they belong to their row.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor, nn


class LossOutput(NamedTuple):
    total: Tensor  # scalar: contrastive + hard_negative_weight * hard; call backward() on this
    contrastive: Tensor  # scalar, the in-batch InfoNCE
    hard: Tensor  # scalar, the hard-negative InfoNCE (0 when no row has a hard negative)
    temperature: float  # the temperature used (after clamping)
    distill: Tensor  # scalar, KL(teacher || student) of the in-batch scores (0 without a teacher)


def text_keys(texts: list[str]) -> torch.LongTensor:
    """A stable 63-bit hash of each text (blake2b), as int64 [len(texts)], for false-negative masking.

    Stable across processes and runs (unlike ``hash()``); texts must be equal exactly to share a key.
    """
    keys = [
        int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") & (2**63 - 1)
        for text in texts
    ]
    return torch.tensor(keys, dtype=torch.int64)


def _world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_plain(tensor: Tensor, world_size: int) -> Tensor:
    """[B, D] on each rank -> [N, D], rank order; no gradient flows back (for inputs without one)."""
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


def _score_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Mean over rows of KL(softmax(teacher) || softmax(student)); both [B, N].

    Entries masked to -inf in the student (in-batch false negatives) are masked in the teacher too and
    count for nothing (0 * log 0 = 0).
    """
    masked = torch.isneginf(student_logits)  # [B, N]
    teacher_log_probs = F.log_softmax(teacher_logits.masked_fill(masked, float("-inf")), dim=-1)
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    terms = teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)  # [B, N], nan where masked
    return terms.masked_fill(masked, 0.0).sum(dim=-1).mean()


def _teacher_cosines(
    teacher_query_emb: Tensor, teacher_code_emb: Tensor, world_size: int
) -> tuple[Tensor, Tensor]:
    """The frozen teacher's in-batch cosines, query -> code and code -> query, [B, N] each, from its [B, D']
    embeddings of the same rows (gathered once: both the KL term and the false-negative mask use them)."""
    teacher_queries = teacher_query_emb.detach().float()  # [B, D']
    teacher_codes = teacher_code_emb.detach().float()  # [B, D']
    all_teacher_queries, all_teacher_codes = teacher_queries, teacher_codes  # [N, D']
    if world_size > 1:  # the teacher carries no gradient: a plain all_gather
        all_teacher_queries = _gather_plain(teacher_queries, world_size)
        all_teacher_codes = _gather_plain(teacher_codes, world_size)
    return teacher_queries @ all_teacher_codes.T, teacher_codes @ all_teacher_queries.T


def _teacher_false_negatives(query_to_code: Tensor, code_to_query: Tensor, labels: Tensor) -> Tensor:
    """[B, N] bool: True where the teacher scores column j above row i's own positive, query -> code or
    code -> query (never at row i's own column)."""
    rows = torch.arange(labels.shape[0], device=labels.device)
    above = query_to_code > query_to_code[rows, labels][:, None]  # [B, N]
    above |= code_to_query > code_to_query[rows, labels][:, None]
    above[rows, labels] = False  # the positive stays
    return above


class ContrastiveLoss(nn.Module):
    def __init__(
        self,
        temperature: float = 0.05,
        learnable_temperature: bool = False,
        min_temperature: float = 0.01,
        max_temperature: float = 1.0,
        hard_negative_weight: float = 0.0,
        symmetric: bool = True,
        gather_across_ranks: bool = True,
        distill_weight: float = 0.0,
        distill_temperature: float = 0.0,
        teacher_false_negatives: bool = False,
    ) -> None:
        super().__init__()
        if min_temperature <= 0:
            raise ValueError(f"min_temperature must be > 0, got {min_temperature}")
        if min_temperature > max_temperature:
            raise ValueError(
                f"min_temperature ({min_temperature}) must be <= max_temperature ({max_temperature})"
            )
        if not min_temperature <= temperature <= max_temperature:
            raise ValueError(
                f"temperature {temperature} is outside [min_temperature, max_temperature] = "
                f"[{min_temperature}, {max_temperature}]"
            )
        if hard_negative_weight < 0:
            raise ValueError(f"hard_negative_weight must be >= 0, got {hard_negative_weight}")
        if distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {distill_weight}")
        if distill_temperature < 0:
            raise ValueError(
                f"distill_temperature must be >= 0 (0 = the contrastive one), got {distill_temperature}"
            )
        self.distill_weight, self.distill_temperature = distill_weight, distill_temperature
        # In-batch candidates the frozen teacher scores above the positive are likely right answers too
        # (another function that does the same): hidden from the contrastive term instead of pushed away.
        self.teacher_false_negatives = teacher_false_negatives
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature
        self.hard_negative_weight = hard_negative_weight
        self.symmetric = symmetric
        self.gather_across_ranks = gather_across_ranks
        self.learnable_temperature = learnable_temperature
        # log(1/T): the scale multiplies the cosines. A parameter only when learnable.
        initial_log_scale = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learnable_temperature:
            self.log_scale = nn.Parameter(initial_log_scale)
        else:
            self.register_buffer("log_scale", initial_log_scale, persistent=False)

    def scale(self) -> Tensor:
        """1 / temperature, clamped to the bounds (a 0-dim tensor that carries the gradient when learnable)."""
        log_scale = self.log_scale.float().clamp(
            min=math.log(1.0 / self.max_temperature), max=math.log(1.0 / self.min_temperature)
        )
        return log_scale.exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().detach())

    def forward(
        self,
        query_emb: Tensor,
        code_emb: Tensor,
        query_keys: Tensor | None = None,
        code_keys: Tensor | None = None,
        hard_negative_emb: Tensor | None = None,
        hard_negative_mask: Tensor | None = None,
        teacher_query_emb: Tensor | None = None,
        teacher_code_emb: Tensor | None = None,
    ) -> LossOutput:
        """query_emb, code_emb [B, D] (row i is a pair); keys [B] int64; hard negatives [B, H, D], mask [B, H];
        teacher_query_emb, teacher_code_emb [B, D'] (a frozen teacher's embeddings of the same rows)."""
        rank, world_size = _world() if self.gather_across_ranks else (0, 1)
        _check_pair_inputs(query_emb, code_emb, world_size)
        _check_keys(query_keys, code_keys, query_emb.shape[0])
        _check_hard_negatives(hard_negative_emb, hard_negative_mask, *query_emb.shape)
        _check_teacher(teacher_query_emb, teacher_code_emb, query_emb.shape[0])
        local_batch = query_emb.shape[0]
        query_emb, code_emb = query_emb.float(), code_emb.float()
        all_queries, all_codes = query_emb, code_emb  # [N, D]
        if world_size > 1:
            all_queries = torch.cat(dist_nn.all_gather(query_emb), dim=0)
            all_codes = torch.cat(dist_nn.all_gather(code_emb), dim=0)
        # [B]: the column of row i's positive among the N global candidates.
        labels = torch.arange(local_batch, device=query_emb.device) + rank * local_batch
        scale = self.scale()

        cosine_query_to_code = query_emb @ all_codes.T  # [B, N]
        cosine_code_to_query = code_emb @ all_queries.T  # [B, N]
        false_negatives = self._false_negative_mask(query_keys, code_keys, labels, world_size)  # [B, N]
        teacher_cosines = None  # ([B, N] query -> code, [B, N] code -> query) of the frozen teacher
        if teacher_query_emb is not None:
            teacher_cosines = _teacher_cosines(teacher_query_emb, teacher_code_emb, world_size)
        if self.teacher_false_negatives and teacher_cosines is not None:
            above = _teacher_false_negatives(*teacher_cosines, labels)
            false_negatives = above if false_negatives is None else false_negatives | above

        def masked(logits: Tensor) -> Tensor:  # after scaling: -inf x scale would give a nan gradient
            return logits if false_negatives is None else logits.masked_fill(false_negatives, float("-inf"))

        logits_query_to_code = masked(scale * cosine_query_to_code)  # [B, N]
        logits_code_to_query = masked(scale * cosine_code_to_query)  # [B, N]
        contrastive = F.cross_entropy(logits_query_to_code, labels)
        if self.symmetric:
            contrastive = (contrastive + F.cross_entropy(logits_code_to_query, labels)) / 2

        hard = self._hard_negative_loss(query_emb, code_emb, hard_negative_emb, hard_negative_mask, scale)
        distill = query_emb.new_zeros(())
        if teacher_cosines is not None:
            distill = self._distillation_loss(
                *teacher_cosines, cosine_query_to_code, cosine_code_to_query, masked, scale
            )
        total = contrastive + self.hard_negative_weight * hard + self.distill_weight * distill
        return LossOutput(total, contrastive, hard, float(1.0 / scale.detach()), distill)

    def _distillation_loss(
        self,
        teacher_query_to_code: Tensor,
        teacher_code_to_query: Tensor,
        cosine_query_to_code: Tensor,
        cosine_code_to_query: Tensor,
        masked: Callable[[Tensor], Tensor],
        scale: Tensor,
    ) -> Tensor:
        """KL(teacher || student) over each row's in-batch scores: [B, N] teacher and student cosines;
        ``masked`` hides the false negatives from the student (and so from the teacher, see _score_kl)."""
        # One temperature for both sides (detached: the KL does not move a learnable temperature).
        distill_scale = 1.0 / self.distill_temperature if self.distill_temperature else scale.detach()
        distill = _score_kl(
            distill_scale * teacher_query_to_code, masked(distill_scale * cosine_query_to_code)
        )
        if self.symmetric:
            student_code_to_query = masked(distill_scale * cosine_code_to_query)
            distill = (distill + _score_kl(distill_scale * teacher_code_to_query, student_code_to_query)) / 2
        return distill

    def _false_negative_mask(
        self, query_keys: Tensor | None, code_keys: Tensor | None, labels: Tensor, world_size: int
    ) -> Tensor | None:
        """[B, N] bool: True where column j repeats row i's query or code (never at row i's own column)."""
        if query_keys is None and code_keys is None:
            return None
        local_batch = labels.shape[0]
        mask = torch.zeros(local_batch, local_batch * world_size, dtype=torch.bool, device=labels.device)
        for keys in (query_keys, code_keys):
            if keys is None:
                continue
            keys = keys.to(labels.device)
            all_keys = _gather_plain(keys, world_size) if world_size > 1 else keys  # keys: no gradient
            mask |= keys[:, None] == all_keys[None, :]  # [B, 1] == [1, N] -> [B, N]
        mask[torch.arange(local_batch, device=labels.device), labels] = False  # the positive stays
        return mask

    def _hard_negative_loss(
        self,
        query_emb: Tensor,
        code_emb: Tensor,
        hard_negative_emb: Tensor | None,
        hard_negative_mask: Tensor | None,
        scale: Tensor,
    ) -> Tensor:
        """InfoNCE over [positive, hard negatives] for the rows that have at least one hard negative."""
        if hard_negative_emb is None:
            return query_emb.new_zeros(())
        hard_negative_emb = hard_negative_emb.float()
        positive = (query_emb * code_emb).sum(dim=-1, keepdim=True)  # [B, 1]
        negatives = torch.einsum("bd,bhd->bh", query_emb, hard_negative_emb)  # [B, H]
        logits = scale * torch.cat([positive, negatives], dim=1)  # [B, 1 + H], the positive in column 0
        if hard_negative_mask is None:
            hard_negative_mask = torch.ones(negatives.shape, dtype=torch.bool, device=negatives.device)
        hard_negative_mask = hard_negative_mask.to(negatives.device)
        # [B, 1 + H]: the positive is always kept.
        keep = torch.cat([torch.ones_like(hard_negative_mask[:, :1]), hard_negative_mask], dim=1)
        logits = logits.masked_fill(~keep, float("-inf"))
        rows = hard_negative_mask.any(dim=1)  # [B], rows with at least one hard negative
        if not bool(rows.any()):
            return query_emb.new_zeros(())
        labels = torch.zeros(int(rows.sum()), dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits[rows], labels)


# ---------------------------------------------------------------------------------------------------------
# The encoder and the loss as DeepSpeed trains them (train_encoder)


def held_out_contrastive_loss(
    query_emb: Tensor, code_emb: Tensor, temperature: float, batch_size: int, symmetric: bool = True
) -> float:
    """Training's contrastive term on held-out pairs, query_emb and code_emb [N, D] (row i a pair): InfoNCE
    at ``temperature`` over consecutive batches of ``batch_size`` rows (a last batch of one row has no
    negative and is left out), averaged by rows. No teacher, no hard negatives, this process only: a
    validation loss comparable from step to step, not the training total."""
    loss = ContrastiveLoss(
        temperature=temperature,
        min_temperature=min(temperature, 0.01),
        max_temperature=max(temperature, 1.0),
        symmetric=symmetric,
        gather_across_ranks=False,
    )
    weighted, rows = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(query_emb), batch_size):
            queries, codes = query_emb[start : start + batch_size], code_emb[start : start + batch_size]
            if len(queries) < 2:
                continue
            weighted += float(loss(queries, codes).contrastive) * len(queries)
            rows += len(queries)
    return weighted / rows if rows else float("nan")


class EncoderWithLoss(nn.Module):
    """What DeepSpeed trains: the encoder and the loss (whose temperature may be a parameter)."""

    def __init__(self, encoder: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.encoder, self.loss = encoder, loss

    def forward(self, batch: dict[str, Tensor]) -> Any:
        query_emb = self.encoder.encode_query(
            batch["query_input_ids"], batch["query_attention_mask"]
        )  # [B, D]
        code_emb = self.encoder.encode_code(batch["code_input_ids"], batch["code_attention_mask"])  # [B, D]
        hard_emb = hard_mask = None
        if "hard_negative_input_ids" in batch:
            negatives = self.encoder.encode_code(
                batch["hard_negative_input_ids"], batch["hard_negative_attention_mask"]
            )  # [N, D]: every hard negative of the batch once
            index = batch["hard_negative_index"]  # [B, H], -1 = none
            padded = torch.cat([negatives, negatives.new_zeros(1, negatives.shape[1])])  # row N is zeros
            hard_emb = padded[torch.where(index >= 0, index, negatives.shape[0])]  # [B, H, D]
            hard_mask = index >= 0  # [B, H]
        return self.loss(
            query_emb,
            code_emb,
            batch["query_keys"],
            batch["code_keys"],
            hard_emb,
            hard_mask,
            batch.get("teacher_query_emb"),
            batch.get("teacher_code_emb"),
        )


def add_teacher_embeddings(teacher: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch plus the teacher's query and code embeddings ([B, D] each) for the distillation term."""
    with torch.no_grad():
        return {
            **batch,
            "teacher_query_emb": teacher.encode_query(
                batch["query_input_ids"], batch["query_attention_mask"]
            ),
            "teacher_code_emb": teacher.encode_code(batch["code_input_ids"], batch["code_attention_mask"]),
        }


# ---------------------------------------------------------------------------------------------------------
# Argument checks: a clear ValueError naming the argument, its expected and its actual shape


def _check_pair_inputs(query_emb: Tensor, code_emb: Tensor, world_size: int) -> None:
    for name, emb in (("query_emb", query_emb), ("code_emb", code_emb)):
        if emb.dim() != 2:
            raise ValueError(f"{name} must be 2-D [batch, dim], got shape {tuple(emb.shape)}")
        if not emb.is_floating_point():
            raise ValueError(f"{name} must be a floating point tensor, got {emb.dtype}")
    if query_emb.shape != code_emb.shape:
        raise ValueError(
            f"query_emb and code_emb must have the same shape [batch, dim], got {tuple(query_emb.shape)} "
            f"and {tuple(code_emb.shape)}"
        )
    batch = query_emb.shape[0]
    if batch * world_size < 2:
        raise ValueError(
            f"in-batch contrastive loss needs at least 2 pairs in the (global) batch, got {batch * world_size}"
        )


def _check_keys(query_keys: Tensor | None, code_keys: Tensor | None, batch: int) -> None:
    for name, keys in (("query_keys", query_keys), ("code_keys", code_keys)):
        if keys is None:
            continue
        if keys.shape != (batch,):
            raise ValueError(f"{name} must have shape [{batch}] (one key per row), got {tuple(keys.shape)}")
        if keys.dtype != torch.int64:
            raise ValueError(f"{name} must be int64 (see text_keys), got {keys.dtype}")


def _check_hard_negatives(
    hard_negative_emb: Tensor | None, hard_negative_mask: Tensor | None, batch: int, dim: int
) -> None:
    if hard_negative_emb is None:
        if hard_negative_mask is not None:
            raise ValueError("hard_negative_mask given without hard_negative_emb")
        return
    if (
        hard_negative_emb.dim() != 3
        or hard_negative_emb.shape[0] != batch
        or hard_negative_emb.shape[2] != dim
    ):
        raise ValueError(
            f"hard_negative_emb must have shape [{batch}, H, {dim}] (batch, hard negatives per row, dim), "
            f"got {tuple(hard_negative_emb.shape)}"
        )
    if not hard_negative_emb.is_floating_point():
        raise ValueError(f"hard_negative_emb must be a floating point tensor, got {hard_negative_emb.dtype}")
    if hard_negative_mask is not None:
        expected = tuple(hard_negative_emb.shape[:2])
        if tuple(hard_negative_mask.shape) != expected:
            raise ValueError(
                f"hard_negative_mask must have shape {list(expected)} (batch, hard negatives per row), "
                f"got {tuple(hard_negative_mask.shape)}"
            )
        if hard_negative_mask.dtype != torch.bool:
            raise ValueError(f"hard_negative_mask must be bool, got {hard_negative_mask.dtype}")


def _check_teacher(teacher_query_emb: Tensor | None, teacher_code_emb: Tensor | None, batch: int) -> None:
    if (teacher_query_emb is None) != (teacher_code_emb is None):
        raise ValueError("teacher_query_emb and teacher_code_emb must be given together")
    if teacher_query_emb is not None and (
        teacher_query_emb.dim() != 2
        or teacher_query_emb.shape != teacher_code_emb.shape
        or teacher_query_emb.shape[0] != batch
    ):
        raise ValueError(
            f"teacher embeddings must both have shape [{batch}, D] (one row per pair), got "
            f"{tuple(teacher_query_emb.shape)} and {tuple(teacher_code_emb.shape)}"
        )
