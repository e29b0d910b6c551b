"""Presets <-> pipeline parameters: one rule, ``<section>_<key>``.

The index pipeline (src/semcode/pipeline/index_pipeline.py) has no presets: its parameters are the index
stage's config fields as ``index_<key>`` beside its inputs, set one by one (``index_arguments`` checks them).

A preset (src/semcode/configs/<name>.yaml) has one section per stage whose keys are fields of that stage's config;
the pipeline (src/semcode/pipeline/train_pipeline.py) has one parameter per such field, named
``<section>_<key>``: ``train_encoder: {batch_size: 16}`` is the argument ``train_encoder_batch_size=16``.
The mapping is the same for ``semcode run`` (kfp.local) and ``semcode submit`` (the KFP API).

Every section is validated against its stage config before anything runs, so a typo in a preset fails
in a second with the key and the known keys named. publish has no section: it takes the gate's
``registry`` and ``name`` (two values that must agree), and is validated from them when a registry is
set.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from semcode import config as cfg
from semcode.config import ConfigError, field
from semcode.stages import (
    build_index,
    evaluate,
    export_onnx,
    gate,
    ingest,
    mine_hard_negatives,
    publish,
    train_decoder,
    train_encoder,
    train_tokenizer,
)
from semcode.stages import index as index_stage

MAX_HARD_NEGATIVE_ROUNDS = 2  # the pipeline unrolls this many rounds (a KFP DAG is static)


@dataclass(frozen=True)
class HardNegativeConfig:
    """How many mine -> continue-training rounds follow the first training (preset section hard_negative)."""

    rounds: int = field(
        0,
        f"mine_hard_negatives -> train_encoder rounds after the first training, 0..{MAX_HARD_NEGATIVE_ROUNDS}; "
        "each continues from the previous encoder on pairs mined with it",
    )

    def validate(self) -> None:
        if not 0 <= self.rounds <= MAX_HARD_NEGATIVE_ROUNDS:
            raise ConfigError(f"rounds must be 0..{MAX_HARD_NEGATIVE_ROUNDS}, got {self.rounds}")


# preset section -> its stage's config class, in pipeline order. hard_negative_training configures the
# train_encoder task of each hard-negative round: the keys it exposes override train_encoder's.
STAGE_CONFIGS: dict[str, type] = {
    "ingest": ingest.IngestConfig,
    "train_tokenizer": train_tokenizer.TrainTokenizerConfig,
    "train_encoder": train_encoder.TrainEncoderConfig,
    "hard_negative": HardNegativeConfig,
    "mine_hard_negatives": mine_hard_negatives.MineHardNegativesConfig,
    "hard_negative_training": train_encoder.TrainEncoderConfig,
    "evaluate": evaluate.EvaluateConfig,
    "train_decoder": train_decoder.TrainDecoderConfig,
    "build_index": build_index.BuildIndexConfig,
    "export_onnx": export_onnx.ExportOnnxConfig,
    "gate": gate.GateConfig,
}
# Pipeline parameters that are not stage config fields: where a task runs, not what it computes.
CLUSTER_PARAMETERS = (
    "gpu_count",
    "gpu_node_selector",
    "gpu_tolerations",
    "s3_secret_name",
    "num_nodes",
    "trainjob_runtime",
    "checkpoint_root",
    "tensorboard_prefix",
    "resume_run_id",
)
# A config field's Python type -> the KFP parameter type that carries it.
KFP_TYPES = {str: "String", int: "Integer", float: "Float", bool: "Boolean", tuple: "List"}


def parameter_name(section: str, key: str) -> str:
    return f"{section}_{key}"


def split_parameter(name: str) -> tuple[str, str] | None:
    """``train_encoder_batch_size`` -> ("train_encoder", "batch_size"); None for a cluster parameter."""
    for section in sorted(STAGE_CONFIGS, key=len, reverse=True):  # train_encoder before a shorter prefix
        if name.startswith(section + "_"):
            return section, name[len(section) + 1 :]
    return None


def kfp_type(section: str, key: str) -> str:
    """The KFP type name (String, Integer, Float, Boolean, List) of a stage config field."""
    annotation = typing.get_type_hints(STAGE_CONFIGS[section])[key]
    return KFP_TYPES[typing.get_origin(annotation) or annotation]


def stage_default(section: str, key: str) -> Any:
    """A stage config field's default, as a pipeline parameter holds it (tuples as lists)."""
    fields = {f.name: f for f in dataclasses.fields(STAGE_CONFIGS[section])}
    default = fields[key].default
    return list(default) if isinstance(default, tuple) else default


def resolve_configs(
    preset: Mapping, preset_name: str, overrides: Mapping[str, Mapping] | None = None
) -> dict:
    """One validated config per stage section from a preset, with ``overrides`` (same shape) on top.

    Also a ``publish`` config when the gate has a registry. Raises ConfigError naming the preset, the
    section and the key.
    """
    sections = {name: dict(values or {}) for name, values in preset.items()}
    unknown = sorted(set(sections) - set(STAGE_CONFIGS))
    if unknown:
        hint = " (publish takes the gate's registry and name)" if "publish" in unknown else ""
        raise cfg.ConfigError(
            f"preset {preset_name}: unknown section(s) {unknown}; known: {list(STAGE_CONFIGS)}{hint}"
        )
    for section, values in (overrides or {}).items():
        sections.setdefault(section, {}).update(values)
    configs = {
        section: cfg.from_dict(
            cls, sections.get(section, {}), source=f"preset {preset_name}, section {section}"
        )
        for section, cls in STAGE_CONFIGS.items()
    }
    if configs["gate"].registry:
        configs["publish"] = cfg.from_dict(
            publish.PublishConfig,
            {"registry": configs["gate"].registry, "name": configs["gate"].name},
            source=f"preset {preset_name}, gate registry and name",
        )
    return configs


def preset_arguments(
    preset: Mapping, preset_name: str, overrides: Mapping[str, Mapping] | None = None
) -> dict[str, Any]:
    """The pipeline arguments of a preset (and overrides): ``{section_key: value}`` for every key they set.

    Values come from the validated configs, so they have the field's type (YAML ``14`` for a float
    field is 14.0; tuples are lists). Keys left out keep the pipeline default.
    """
    configs = resolve_configs(preset, preset_name, overrides)
    arguments = {}
    for source in (preset, overrides or {}):
        for section, values in source.items():
            resolved = cfg.to_dict(configs[section])
            for key in values or {}:
                arguments[parameter_name(section, key)] = resolved[key]
    return arguments


def check_arguments(arguments: Iterable[str], parameters: Iterable[str], where: str) -> None:
    """Raise ConfigError for arguments that are not pipeline parameters (a stage field the pipeline
    does not expose), naming them and where they came from."""
    missing = sorted(set(arguments) - set(parameters))
    if missing:
        raise cfg.ConfigError(
            f"{where}: {missing} are stage config fields but not pipeline parameters; leave them out of "
            "the preset, or add them to src/semcode/pipeline/train_pipeline.py and its component"
        )


INDEX_PREFIX = "index_"  # the index pipeline's stage parameters: index_<IndexConfig field>
INDEX_INPUTS = ("encoder", "sources", "previous")  # index_<input>: the stage's inputs, not config fields


def index_arguments(values: Mapping[str, Any]) -> dict[str, Any]:
    """The index pipeline's arguments from ``values``: each ``index_<field>`` checked and typed by the index
    stage's config (YAML ``3`` for a float is 3.0, tuples are lists; ConfigError names a bad one), the
    other parameters as they are."""
    fields = {
        name[len(INDEX_PREFIX) :]: value
        for name, value in values.items()
        if name.startswith(INDEX_PREFIX) and name[len(INDEX_PREFIX) :] not in INDEX_INPUTS
    }
    resolved = cfg.to_dict(cfg.from_dict(index_stage.IndexConfig, fields, source="index pipeline parameters"))
    return {**values, **{INDEX_PREFIX + key: resolved[key] for key in fields}}
