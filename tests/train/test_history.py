"""semcode.train.history: the progress line, and the live TensorBoard curves (local, S3, switched off)."""

from __future__ import annotations

import os

import pytest
from toy_training import scalars

from semcode import storage
from semcode.train.history import (
    TENSORBOARD_PREFIX_ENV,
    TENSORBOARD_SWITCH_ENV,
    EventFileMirror,
    LiveMetrics,
    TrainingLog,
    check_live_log_prefix,
    live_log_dirs,
    live_log_upload,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_training_log_progress_line_format():
    log = TrainingLog("encoder", "pairs", total_steps=700, epochs=3, force_plain=True)
    log.items_this_run, log.train_seconds, log.steps_this_run = 512 * 10, 10.0, 120
    line = log.step_line(120, 1, {"loss": 2.31, "contrastive": 2.1, "hard": 0.21}, 4.8e-4)
    assert line.startswith(
        "epoch 1/3 step 120/700 | loss 2.3100 (contrastive 2.1000 hard 0.2100) | lr 4.8e-04 |"
    )
    assert " 512 pairs/s | eta " in line


def test_live_log_dirs_switch_and_prefix(tmp_path, monkeypatch):
    assert live_log_dirs("encoder", tmp_path / "tb") == [tmp_path / "tb"]
    assert live_log_upload("encoder") is None
    monkeypatch.setenv(TENSORBOARD_PREFIX_ENV, str(tmp_path / "logs"))
    assert live_log_dirs("encoder", tmp_path / "tb") == [tmp_path / "tb", tmp_path / "logs" / "encoder"]
    assert live_log_upload("encoder") is None
    monkeypatch.setenv(TENSORBOARD_PREFIX_ENV, "s3://bucket/logs")
    assert live_log_dirs("encoder", tmp_path / "tb") == [tmp_path / "tb"]  # uploaded, not written
    assert live_log_upload("encoder") == "s3://bucket/logs/encoder"
    monkeypatch.setenv(TENSORBOARD_PREFIX_ENV, "gs://bucket/logs")
    with pytest.raises(ValueError, match="gs://bucket/logs"):
        live_log_dirs("encoder", tmp_path / "tb")
    monkeypatch.setenv(TENSORBOARD_SWITCH_ENV, "0")
    assert live_log_dirs("encoder", tmp_path / "tb") == []
    monkeypatch.setenv(TENSORBOARD_PREFIX_ENV, "s3://bucket/logs")
    assert live_log_upload("encoder") is None


def test_event_files_reach_s3_while_training_and_tensorboard_reads_them_there(tmp_path, monkeypatch, s3_env):
    """A live S3 prefix: the mirror uploads grown event files as it goes (not only at the end), and
    TensorBoard's own reader (its boto3 file system, S3_ENDPOINT) reads the curves back from S3."""

    prefix = f"{s3_env}/runs/one"
    monkeypatch.setenv(TENSORBOARD_PREFIX_ENV, prefix)
    check_live_log_prefix("toy")  # writable: no error
    local = tmp_path / "tb"
    live = LiveMetrics([local], 0, upload_to=live_log_upload("toy"))
    live.mirror.every = 3600.0  # the test drives the uploads itself
    live.add({"train/loss": 2.0}, 1)
    live.flush()
    live.mirror.sync()
    uploaded = storage.list_files(f"{prefix}/toy")
    assert len(uploaded) == 1 and "events.out.tfevents." in uploaded[0]
    first_size = len(storage.read_bytes(uploaded[0]))
    live.add({"train/loss": 1.0}, 2)
    live.close()  # flushes and uploads once more
    assert len(storage.read_bytes(uploaded[0])) > first_size

    monkeypatch.setenv("S3_ENDPOINT", os.environ["AWS_ENDPOINT_URL"])  # what TensorBoard's S3 reader reads
    assert scalars(f"{prefix}/toy")["train/loss"] == [(1, 2.0), (2, 1.0)]


def test_an_unwritable_live_log_prefix_is_refused_before_training(tmp_path, monkeypatch, s3_env):
    monkeypatch.setenv(TENSORBOARD_PREFIX_ENV, "s3://no-such-bucket-semcode/logs")
    with pytest.raises(OSError, match=f"{TENSORBOARD_PREFIX_ENV}.*no-such-bucket-semcode"):
        check_live_log_prefix("encoder")


def test_a_failed_upload_is_said_once_and_retried(tmp_path, monkeypatch, capsys):

    calls = []

    def failing_copy(src, dst):
        calls.append(dst)
        if len(calls) <= 2:
            raise OSError("endpoint unreachable")

    monkeypatch.setattr(storage, "copy", failing_copy)
    (tmp_path / "events.out.tfevents.1").write_bytes(b"x")
    mirror = EventFileMirror(tmp_path, "s3://bucket/logs", every=3600.0)
    mirror.sync()
    mirror.sync()
    mirror.close()  # the third try succeeds
    assert calls == ["s3://bucket/logs/events.out.tfevents.1"] * 3
    assert capsys.readouterr().err.count("endpoint unreachable") == 1


def _train_a_little(log: TrainingLog, out_dir, losses: list[float]) -> None:
    log.start_live(out_dir / "tensorboard", 0)
    for step, loss in enumerate(losses, start=1):
        log.step(step, 1, {"loss": loss}, lr=1e-3, items=8)
    log.evaluate(len(losses), {"mrr": 0.5, "loss": losses[-1]})
    log.close()


def test_each_stage_is_its_own_short_run_with_its_own_tags_config_and_hparams(tmp_path, monkeypatch):
    """The encoder (a hard-negative round's task folder) and the decoder under one SEMCODE_TENSORBOARD_DIR:
    short run names, no tag in common, the config as text and the hparams plugin's record, read back
    with TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from semcode.train.history import run_name

    monkeypatch.setenv(TENSORBOARD_PREFIX_ENV, str(tmp_path / "live"))
    encoder_out = tmp_path / "artifacts" / "train-encoder-2" / "encoder"
    decoder_out = tmp_path / "artifacts" / "train-decoder" / "decoder"
    assert run_name("encoder", encoder_out) == "encoder-2" and run_name("decoder", decoder_out) == "decoder"
    assert run_name("encoder", tmp_path / "runs" / "encoder") == "encoder"
    config = {"lr": 5e-4, "size": "tiny", "suites": ["test", "cosqa"], "resume_from": None}
    for tag, out, losses in (("encoder", encoder_out, [0.26, 0.08]), ("decoder", decoder_out, [9.0, 2.6])):
        log = TrainingLog(tag, "items", 2, 1, force_plain=True, run=run_name(tag, out), config=config)
        _train_a_little(log, out, losses)
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["decoder", "encoder-2"]

    tags = {}
    for run in ("encoder-2", "decoder"):
        events = EventAccumulator(str(tmp_path / "live" / run))
        events.Reload()
        stage = run.split("-")[0]
        tags[stage] = set(events.Tags()["scalars"])
        assert all(tag.startswith(f"{stage}/") for tag in tags[stage])
        assert {f"{stage}/train/loss", f"{stage}/train/lr", f"{stage}/valid/mrr"} <= tags[stage]
        assert events.Scalars(f"{stage}/final/best_mrr")[-1].value == 0.5
        (config_text,) = events.Tensors(f"{stage}/config/text_summary")  # the text plugin's tag
        assert "| lr | 0.0005 |" in config_text.tensor_proto.string_val[0].decode()
        hparams = events.PluginTagToContent("hparams")
        session = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
        assert session.session_start_info.hparams["size"].string_value == "tiny"
        assert session.session_start_info.hparams["lr"].number_value == 5e-4
        experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"])
        metric_tags = {info.name.tag for info in experiment.experiment.metric_infos}
        assert f"{stage}/final/best_mrr" in metric_tags
    assert not tags["encoder"] & tags["decoder"]  # no chart mixes the two scales
