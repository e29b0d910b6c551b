"""encoder/README.md: the model card in the layout model hubs and sentence-transformers read.

The bundle's encoder/ folder loads with ``SentenceTransformer("./bundle/encoder")`` and can be pushed to a
model hub as it is. Hubs read a README.md whose YAML front matter names the library, the pipeline tag, the
base model, the natural and programming languages, the licence and the evaluation results in the
``model-index`` layout (https://huggingface.co/docs/hub/model-cards); the prose below the front matter
is the bundle's own model_card.md (semcode.report.model_card), so the two never say different things.
"""

from __future__ import annotations

from typing import Any

import yaml

from semcode import report

LIBRARY_NAME = "sentence-transformers"
PIPELINE_TAG = "sentence-similarity"
TAGS = ("sentence-transformers", "feature-extraction", "code-search", "semcode")
# The licence of the model weights made by semcode (pyproject.toml); the indexed code keeps its own
# licences (report.DATA_LICENCE_NOTE, in the prose).
LICENSE = "apache-2.0"
# init_from aliases that are hub models (semcode.models.encoder.checkpoint_dir)
HUB_ALIASES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
METRICS = ("mrr", "recall@1", "recall@10", "ndcg@10")


def base_model(bundle: dict) -> str | None:
    """The hub id the encoder's weights descend from (``minilm`` -> its hub id), None when trained from
    scratch or from a local or s3:// checkpoint of unknown descent (a hub reads base_model as a hub id
    only). The encoder's own ``base`` (semcode_encoder.json) first: it survives hard-negative rounds, whose
    init_from is the previous round's folder; then the training config's init_from (older encoders)."""
    source = bundle.get("source") or {}
    base = str((source.get("encoder_config") or {}).get("base") or "")
    configs = source.get("stage_configs") or {}
    init_from = str((configs.get("TrainEncoderConfig") or {}).get("init_from") or "")
    for alias in (base, init_from):
        if alias in HUB_ALIASES:
            return HUB_ALIASES[alias]
    return None


def programming_languages(metrics: dict) -> list[str]:
    """The languages of the training corpus (ingest's metrics), sorted."""
    return sorted(str(language) for language in ((metrics.get("ingest") or {}).get("languages") or {}))


def model_index(bundle: dict, metrics: dict) -> list[dict[str, Any]]:
    """The ``model-index`` entry: one result per suite and protocol with the model's metrics."""
    results = []
    for row in report.metric_rows(metrics):
        values = row["systems"].get("model") or {}
        entries = [
            {
                "type": metric,
                "value": round(float(values[metric]), 4),
                "name": f"{metric} ({row['protocol']})",
            }
            for metric in METRICS
            if isinstance(values.get(metric), int | float)
        ]
        if entries:
            results.append(
                {
                    "task": {"type": "text-retrieval", "name": "Code search"},
                    "dataset": {
                        "type": f"semcode/{row['suite']}",
                        "name": f"{row['suite']} ({row['protocol']})",
                    },
                    "metrics": entries,
                }
            )
    return [{"name": f"{bundle.get('name')}-{bundle.get('version')}", "results": results}]


def front_matter(bundle: dict, metrics: dict) -> dict[str, Any]:
    """The card's metadata, in the hub's key names."""
    languages = programming_languages(metrics)
    meta: dict[str, Any] = {
        "library_name": LIBRARY_NAME,
        "pipeline_tag": PIPELINE_TAG,
        "language": ["en", "code"],  # English queries (docstrings), code documents
        "license": LICENSE,
        "tags": [*TAGS, *languages],
    }
    base = base_model(bundle)
    if base is not None:
        meta["base_model"] = base
    meta["model-index"] = model_index(bundle, metrics)
    return meta


def hub_readme(bundle: dict, metrics: dict) -> str:
    """encoder/README.md: the YAML front matter, then the prose of model_card.md."""
    header = yaml.safe_dump(front_matter(bundle, metrics), sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n{report.model_card(bundle, metrics)}"
