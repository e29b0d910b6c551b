"""Component publish: a bundle the gate passed -> the registry and its latest pointer (semcode.stages.publish)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from semcode.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def publish(bundle: Input[Model], manifest: Output[Artifact], registry: str, name: str):
    """Validate the bundle, copy it to <registry>/<name>/<version>/ and then point latest at it.

    Args:
        bundle: the gate's release bundle.
        manifest: manifest.json (what was copied where, the previous and new latest) and config.json.
        registry: a local folder or s3://bucket/prefix.
        name: model name: the registry folder <registry>/<name>/ (the gate's name).
    """
    from semcode import config
    from semcode.stages import publish as stage

    stage_config = config.from_dict(
        stage.PublishConfig, {"registry": registry, "name": name}, source="publish component"
    )
    stage.run(stage_config, bundle.path, manifest.path)
