"""semcode.train.distributed: the LR schedule and the DeepSpeed config."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from semcode.config import ConfigError
from semcode.train.distributed import (
    FP16_LOSS_SCALE,
    deepspeed_config,
    resolve_precision,
    save_deepspeed_config,
    warmup_cosine,
    warmup_cosine_schedule,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_warmup_cosine_shape():
    values = [warmup_cosine(s, warmup_steps=4, total_steps=20, min_lr_ratio=0.1) for s in range(20)]
    assert values[0] == pytest.approx(0.25)  # the first update already learns
    assert values[3] == pytest.approx(1.0)  # the peak at the end of warmup
    assert all(a < b for a, b in zip(values[:4], values[1:4], strict=False))
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))  # then only down
    assert values[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert warmup_cosine(100, 4, 20, 0.1) == pytest.approx(0.1)  # past the end: the floor
    assert warmup_cosine(0, 0, 10, 0.0) == pytest.approx(1.0)  # no warmup
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 0, 0)


def test_deepspeed_config_is_plain_and_checked(tmp_path):
    config = deepspeed_config(16, grad_accum=4, grad_clip=0.5, zero_stage=2, precision="fp32")
    assert config["train_micro_batch_size_per_gpu"] == 16
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["stage"] == 2
    assert config["bf16"] == config["fp16"] == {"enabled": False}
    assert deepspeed_config(8)["bf16"]["enabled"] is torch.cuda.is_available()
    path = save_deepspeed_config(config, tmp_path)
    assert json.loads(path.read_text()) == config
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_config(8, zero_stage=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's choices")
def test_precision_on_the_cpu_is_fp32_and_half_precision_is_refused_in_one_line():
    assert resolve_precision("auto") == resolve_precision("fp32") == "fp32"  # what semcode always did here
    for half in ("fp16", "bf16"):
        with pytest.raises(ConfigError, match=f"precision {half} needs a CUDA GPU.*use --precision fp32"):
            resolve_precision(half)
    with pytest.raises(ConfigError, match=r"precision must be one of \('auto', 'bf16', 'fp16', 'fp32'\)"):
        resolve_precision("fp8")
    config = deepspeed_config(8)  # auto
    assert config["bf16"] == config["fp16"] == {"enabled": False}


@pytest.mark.gpu
def test_precision_on_a_gpu_auto_is_bf16_and_fp16_scales_the_loss():
    assert resolve_precision("auto") == "bf16"  # as before --precision existed
    fp16 = deepspeed_config(8, precision="fp16")
    assert fp16["fp16"] == {"enabled": True, **FP16_LOSS_SCALE} and fp16["fp16"]["loss_scale"] == 0  # dynamic
    assert fp16["bf16"] == {"enabled": False}
    bf16 = deepspeed_config(8, precision="bf16")
    assert bf16["bf16"] == {"enabled": True} and bf16["fp16"] == {"enabled": False}
    assert deepspeed_config(8, precision="fp32")["bf16"]["enabled"] is False
