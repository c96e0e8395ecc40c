"""The deployment wizard: questions with defaults and validation, then a review, then the manifest.

Every answer can also come from a flag or from an answers file (``--answers FILE``, YAML or JSON with
the same keys), so a whole session replays in CI. A prompted answer that is invalid is asked again with
the reason; an invalid answer from a flag or file is an error naming the key.

Keys: source (registry|uri), model, version, model_uri, target, server_type, protocol, image, namespace,
name, replicas, cpu, memory, secret, output, confirm.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import click

from ..errors import Cancelled, SettingsError
from .manifest import (
    SERVER_TYPES,
    TARGETS,
    DeploymentSpec,
    choose_image,
    dump_yaml,
    render,
    validate_name,
    validate_quantity,
)
from .mlflow_registry import MlflowRegistry
from .platform import PROTOCOLS, PlatformConfig, split_image

__all__ = ["ANSWER_KEYS", "WizardResult", "run_wizard"]

ANSWER_KEYS = (
    "source",
    "model",
    "version",
    "model_uri",
    "target",
    "server_type",
    "protocol",
    "image",
    "namespace",
    "name",
    "replicas",
    "cpu",
    "memory",
    "secret",
    "output",
    "confirm",
)
#: Registered-model tag that carries a model-level image (the precedence's "model-level setting").
MODEL_IMAGE_TAG = "envserve.image"


@dataclass
class WizardResult:
    spec: DeploymentSpec
    output: str
    manifest: str
    image_reason: str


class _Ask:
    """Answers from flags/file first; otherwise a prompt that re-asks until the validator accepts."""

    def __init__(self, answers: Dict[str, Any], interactive: bool) -> None:
        unknown = set(answers) - set(ANSWER_KEYS)
        if unknown:
            raise SettingsError(
                "unknown answer keys: %s; known keys are %s"
                % (", ".join(sorted(unknown)), ", ".join(ANSWER_KEYS))
            )
        self.answers = {k: v for k, v in answers.items() if v is not None}
        self.interactive = interactive

    def __call__(
        self,
        key: str,
        text: str,
        default: Any = None,
        check: Optional[Callable[[str], Any]] = None,
        choices: Optional[Sequence[str]] = None,
        optional: bool = False,
    ) -> Any:
        def validate(raw: Any) -> Any:
            value = "" if raw is None else str(raw).strip()
            if choices is not None and value not in choices:
                raise SettingsError("%r is not one of %s" % (value, ", ".join(choices)))
            if value == "" and optional:
                return None
            if value == "":
                raise SettingsError("an answer is required")
            return check(value) if check is not None else value

        if key in self.answers:
            try:
                return validate(self.answers[key])
            except SettingsError as exc:
                raise SettingsError("answer %r: %s" % (key, exc)) from None
        if not self.interactive:
            if default is not None or optional:
                return validate(default if default is not None else "")
            raise SettingsError(
                "no answer for %r and no terminal to ask on; pass --%s or put it in --answers"
                % (key, key.replace("_", "-"))
            )

        def proc(raw: str) -> Any:
            try:
                return validate(raw)
            except SettingsError as exc:
                raise click.UsageError(str(exc)) from None

        label = text + (" (%s)" % "/".join(choices) if choices else "") + (" [optional]" if optional else "")
        shown_default = default if default is not None else ("" if optional else None)
        return click.prompt(label, default=shown_default, value_proc=proc, show_default=bool(default))


def _int(value: str) -> int:
    if not re.match(r"^\d+$", value):
        raise SettingsError("%r is not a whole number" % value)
    return int(value)


def _image(value: str) -> str:
    split_image(value)
    return value


def _sanitize(name: str) -> str:
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return text[:63].strip("-") or "model"


def run_wizard(
    answers: Dict[str, Any],
    platform: PlatformConfig,
    tracking_uri: Optional[str] = None,
    interactive: bool = True,
) -> WizardResult:
    ask = _Ask(answers, interactive)
    echo = click.echo if interactive else (lambda *a, **k: None)
    registry = MlflowRegistry(tracking_uri) if tracking_uri else None

    source = ask(
        "source",
        "Model source",
        default="registry" if registry else "uri",
        choices=("registry", "uri") if registry else ("uri",),
    )
    model_name: Optional[str] = None
    model_image: Optional[str] = None
    version: Optional[str] = None
    versions_text = ""
    if source == "registry":
        assert registry is not None
        names = registry.models()
        if not names:
            raise SettingsError("the MLflow registry at %s has no registered models" % tracking_uri)
        echo("Registered models in %s:" % tracking_uri)
        for i, n in enumerate(names, 1):
            echo("  %d. %s" % (i, n))

        def pick_model(value: str) -> str:
            if value.isdigit() and 1 <= int(value) <= len(names):
                return names[int(value) - 1]
            if value not in names:
                raise SettingsError("no registered model %r; choose one of %s" % (value, ", ".join(names)))
            return value

        model_name = ask(
            "model", "Model (name or number)", default=names[0] if len(names) == 1 else None, check=pick_model
        )
        versions = registry.versions(model_name)
        aliases = registry.aliases(model_name)
        versions_text = ", ".join(v.version for v in versions)
        echo(
            "Versions of %s: %s%s"
            % (
                model_name,
                versions_text or "none",
                "; aliases: " + ", ".join("%s -> %s" % kv for kv in sorted(aliases.items()))
                if aliases
                else "",
            )
        )

        def pick_version(value: str) -> str:
            resolved = registry.resolve(model_name, value)
            if resolved is None:
                raise SettingsError(
                    "%s has no version or alias %r (versions: %s; aliases: %s)"
                    % (model_name, value, versions_text or "none", ", ".join(sorted(aliases)) or "none")
                )
            return value

        version_ref = ask("version", "Version, alias or 'latest'", default="latest", check=pick_version)
        version = registry.resolve(model_name, version_ref)
        model_image = registry.tags(model_name).get(MODEL_IMAGE_TAG)
    target = ask("target", "Target", default="seldon", choices=TARGETS)
    server_default = "MLFLOW_SERVER" if source == "registry" else "SKLEARN_SERVER"
    if target == "k8s":
        server_default = "ENVSERVE"
    server_type = ask("server_type", "Server type", default=server_default, choices=SERVER_TYPES)
    protocol = ask(
        "protocol", "Protocol", default="seldon" if target == "seldon" else "v2", choices=PROTOCOLS
    )
    if source == "registry":
        assert registry is not None and model_name is not None and version is not None
        if target == "k8s":  # envserve resolves models:/ itself
            model_uri = "models:/%s/%s" % (model_name, version)
        else:
            model_uri = registry.download_uri(model_name, version)
    else:
        model_uri = ask("model_uri", "Model URI (s3://..., gs://..., models:/...)", check=lambda v: v)

    probe = DeploymentSpec(
        name="probe", target=target, server_type=server_type, protocol=protocol, model_image=model_image
    )
    default_image = choose_image(probe, platform)
    echo("Image: %s (%s)" % (default_image.image, default_image.reason))
    image = ask(
        "image", "Image (Enter keeps it, or NAME:TAG to override)", default=default_image.image, check=_image
    )
    namespace = ask(
        "namespace", "Namespace", default="default", check=lambda v: validate_name(v, "namespace")
    )
    name = ask(
        "name",
        "Deployment name",
        default=_sanitize(model_name or os.path.basename(model_uri.rstrip("/"))),
        check=validate_name,
    )
    replicas = ask("replicas", "Replicas", default="1", check=_int)
    cpu = ask("cpu", "CPU (e.g. 500m, 2)", optional=True, check=lambda v: validate_quantity(v, "cpu"))
    memory = ask(
        "memory", "Memory (e.g. 512Mi, 2Gi)", optional=True, check=lambda v: validate_quantity(v, "memory")
    )
    secret = ask(
        "secret",
        "Secret with storage credentials",
        optional=True,
        check=lambda v: validate_name(v, "secret name"),
    )
    spec = DeploymentSpec(
        name=name,
        target=target,
        namespace=namespace,
        server_type=server_type,
        protocol=protocol,
        model_uri=model_uri,
        secret=secret,
        replicas=replicas,
        cpu=cpu,
        memory=memory,
        image=None if image == default_image.image else image,
        model_image=model_image,
    )
    docs = render(spec, platform)
    chosen = choose_image(spec, platform)
    manifest = dump_yaml(docs)
    output = ask("output", "Write the manifest to", default="%s-%s.yaml" % (name, target))
    echo("")
    echo("Review:")
    for label, value in (
        ("model", model_uri),
        ("target", target),
        ("server type", server_type),
        ("protocol", protocol),
        ("image", "%s (%s)" % (chosen.image, chosen.reason)),
        ("namespace", namespace),
        ("name", name),
        ("replicas", replicas),
        ("cpu", cpu or "-"),
        ("memory", memory or "-"),
        ("secret", secret or "-"),
        ("output", output),
    ):
        echo("  %-12s %s" % (label, value))
    confirm = ask("confirm", "Write it?", default="yes", choices=("yes", "no"))
    if confirm != "yes":
        raise Cancelled("cancelled; nothing written")
    return WizardResult(spec, output, manifest, chosen.reason)


def answers_from_file(path: str) -> Dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise SettingsError("cannot read answers file %s: %s" % (path, exc.strerror)) from None
    except yaml.YAMLError as exc:
        raise SettingsError("answers file %s is not valid YAML/JSON: %s" % (path, exc)) from None
    if not isinstance(doc, dict):
        raise SettingsError("answers file %s must hold a mapping of answers" % path)
    return dict(doc)
