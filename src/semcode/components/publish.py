"""Component publish: a bundle the gate passed -> the registry and its latest pointer (semcode.stages.publish)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from semcode.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def publish(
    bundle: Input[Model], manifest: Output[Artifact], registry: str, name: str, keep_versions: int = 0
):
    """Validate the bundle, copy it to <registry>/<name>/<version>/ and then point latest at it.

    Args:
        bundle: the gate's release bundle.
        manifest: manifest.json (what was copied where, the previous and new latest, what was removed) and config.json.
        registry: a local folder or s3://bucket/prefix.
        name: model name: the registry folder <registry>/<name>/ (the gate's name).
        keep_versions: remove the complete versions beyond the N most recently published (>= 2; 0 = keep all).
    """
    from semcode import config
    from semcode.stages import publish as stage

    stage_config = config.from_dict(
        stage.PublishConfig,
        {"registry": registry, "name": name, "keep_versions": keep_versions},
        source="publish component",
    )
    stage.run(stage_config, bundle.path, manifest.path)
