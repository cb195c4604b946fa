"""Rebuild kubernetes-v1.33-defs.json: the core Kubernetes types the KubeRay schemas point at.

KubeRay's CRDs inline Kubernetes' own PodTemplateSpec, Service, EnvVar, ... schemas (most of
their megabyte). Here those subtrees are ``$ref``s into this file instead: the closure of the
types below, taken from the strict JSON schemas that the kubernetes-validate wheel ships
(generated from Kubernetes' OpenAPI), descriptions dropped. Run it by hand, not in tests:

    pip download --no-deps -d /tmp/kv kubernetes-validate
    python infra/kuberay/schemas/refresh_k8s_defs.py /tmp/kv/kubernetes_validate-*.whl v1.33.0
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

ROOTS = (
    "io.k8s.api.core.v1.PodTemplateSpec",
    "io.k8s.api.core.v1.Service",
    "io.k8s.api.core.v1.EnvVar",
    "io.k8s.api.core.v1.EnvFromSource",
    "io.k8s.api.core.v1.EnvVarSource",
    "io.k8s.api.core.v1.VolumeMount",
    "io.k8s.api.core.v1.SecurityContext",
    "io.k8s.api.core.v1.ResourceRequirements",
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "io.k8s.api.batch.v1.Job",
)
REF = re.compile(r'"#/\$defs/([\w.\-]+)"')


def _strip_descriptions(node: Any) -> Any:
    """Drop prose (a property that is itself named ``description`` is a dict and stays)."""
    if isinstance(node, dict):
        return {k: _strip_descriptions(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [_strip_descriptions(v) for v in node]
    return node


def closure(defs: dict[str, Any], roots: tuple[str, ...] = ROOTS) -> dict[str, Any]:
    """Every definition reachable from ``roots``."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(REF.findall(json.dumps(defs[name])))
    return {name: _strip_descriptions(defs[name]) for name in sorted(seen)}


def main(wheel: str, k8s_version: str) -> None:
    member = f"kubernetes_validate/kubernetes-json-schema/{k8s_version}-local-strict/_definitions.json"
    with zipfile.ZipFile(wheel) as zf:
        defs = json.loads(zf.read(member))["$defs"]
    out = Path(__file__).with_name(f"kubernetes-v{k8s_version.lstrip('v').rsplit('.', 1)[0]}-defs.json")
    body = ",\n".join(
        f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'), sort_keys=True)}" for k, v in closure(defs).items()
    )
    out.write_text(
        '{"$schema":"https://json-schema.org/draft/2020-12/schema",\n'
        f'"x-source":{json.dumps(f"kubernetes-validate {Path(wheel).name}, {member}")},\n'
        f'"$defs":{{\n{body}}}}}\n'
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
