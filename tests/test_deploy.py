"""deploy/: the Dockerfile, docker-compose.yml, the Kubernetes sidecar example and the Helm chart.

No Docker engine or helm binary is needed: the Dockerfile is parsed, compose's variable interpolation is
applied by a small helper, and the chart is rendered by a minimal Go-template renderer that knows only the
subset the chart uses (it fails loudly on anything else, and on any value the templates name that
values.yaml lacks). When a ``helm`` binary is on PATH, ``helm lint`` and ``helm template`` run as well.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the deploy/ manifests")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
SIDECAR = DEPLOY / "kubernetes" / "sidecar.yaml"
CHART = DEPLOY / "helm" / "memproxy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

PORT = 8080


# --- what the code offers: CLI commands, HTTP routes, settings -------------------------------------------


def cli_commands() -> set[str]:
    import typer.main

    from proxy.cli import app

    return set(typer.main.get_command(app).commands)


def require_cli_command(name: str) -> None:
    """``serve`` must exist; ``worker`` lands later, so its absence skips instead of failing."""
    commands = cli_commands()
    if name == "worker" and name not in commands:
        pytest.skip("`memproxy worker` is not implemented yet; the deploy files already run it")
    assert name in commands, f"`memproxy {name}` is not a command of the CLI (it has {sorted(commands)})"


def app_paths() -> set[str]:
    from proxy.app import create_app
    from proxy.config import Settings

    app = create_app(Settings(upstream_url="http://127.0.0.1:9/v1", assistants="passthrough"))
    return {route.path for route in app.routes if hasattr(route, "path")}


def setting_names() -> set[str]:
    from proxy.config import Settings

    return {"MEMPROXY_" + name.upper() for name in Settings.model_fields}


# --- every YAML file parses -----------------------------------------------------------------------------

YAML_FILES = sorted(
    path
    for pattern in ("*.yml", "*.yaml")
    for path in DEPLOY.rglob(pattern)
    if "templates" not in path.relative_to(DEPLOY).parts
)


def test_deploy_has_the_expected_files() -> None:
    expected = [
        DOCKERFILE,
        DEPLOY / "Dockerfile.dockerignore",
        COMPOSE,
        SIDECAR,
        DEPLOY / "README.md",
        CHART / "Chart.yaml",
        CHART / "values.yaml",
        *(
            CHART / "templates" / name
            for name in (
                "_helpers.tpl",
                "deployment-proxy.yaml",
                "deployment-worker.yaml",
                "service.yaml",
                "configmap.yaml",
                "secret.yaml",
                "hpa.yaml",
                "NOTES.txt",
            )
        ),
    ]
    missing = [str(path.relative_to(ROOT)) for path in expected if not path.is_file()]
    assert not missing, f"missing deploy files: {missing}"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_file_parses(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in documents), f"{path}: every document must be a mapping"


def test_every_memproxy_variable_named_in_deploy_is_a_setting() -> None:
    known = setting_names()
    unknown: dict[str, list[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        for name in set(re.findall(r"\bMEMPROXY_[A-Z0-9_]+", path.read_text(errors="replace"))):
            if name not in known:
                unknown.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not unknown, f"MEMPROXY_* names that proxy.config.Settings does not read: {unknown}"


# --- Dockerfile ----------------------------------------------------------------------------------------


class Dockerfile:
    """Instructions grouped by stage, with the effective image config of any target."""

    def __init__(self, text: str) -> None:
        self.global_args: dict[str, str] = {}
        self.stages: list[dict[str, Any]] = []
        for instruction, argument in self._instructions(text):
            if instruction == "FROM":
                words = argument.split()
                name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
                self.stages.append({"base": words[0], "name": name, "instructions": []})
            elif not self.stages:
                assert instruction == "ARG", f"{instruction} before the first FROM"
                key, _, default = argument.partition("=")
                self.global_args[key.strip()] = default.strip()
            else:
                self.stages[-1]["instructions"].append((instruction, argument))

    @staticmethod
    def _instructions(text: str) -> list[tuple[str, str]]:
        out, pending = [], ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue  # comments, parser directives and blank lines (also inside continuations)
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = pending + line, ""
            instruction, _, argument = line.partition(" ")
            out.append((instruction.upper(), argument.strip()))
        assert not pending, "the Dockerfile ends inside a line continuation"
        return out

    def stage(self, name: str) -> dict[str, Any]:
        for stage in self.stages:
            if stage["name"] == name:
                return stage
        raise KeyError(name)

    def resolve_base(self, base: str, build_args: dict[str, str]) -> str:
        args = {**self.global_args, **build_args}
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], base)

    def config(self, build_args: dict[str, str] | None = None, stage: dict | None = None) -> dict[str, Any]:
        """ENV/USER/EXPOSE/VOLUME/HEALTHCHECK/ENTRYPOINT/CMD of the final (or given) stage, inherited."""
        build_args = build_args or {}
        stage = stage or self.stages[-1]
        base = self.resolve_base(stage["base"], build_args)
        names = {s["name"] for s in self.stages if s["name"]}
        if base in names:
            config = self.config(build_args, self.stage(base))
        else:
            config = {"image": base, "env": {}, "expose": [], "volume": [], "stages": []}
        config = copy.deepcopy(config)
        config["stages"].append(stage["name"])
        for instruction, argument in stage["instructions"]:
            if instruction == "ENV":
                for word in shlex.split(argument):
                    key, _, value = word.partition("=")
                    config["env"][key] = value
            elif instruction in ("ENTRYPOINT", "CMD"):
                value = json.loads(argument) if argument.startswith("[") else ["/bin/sh", "-c", argument]
                config[instruction.lower()] = value
                if instruction == "ENTRYPOINT":
                    config.pop("cmd", None)  # Docker resets an inherited CMD when ENTRYPOINT is set
            elif instruction == "USER":
                config["user"] = argument
            elif instruction == "EXPOSE":
                config["expose"] += argument.split()
            elif instruction == "VOLUME":
                config["volume"] += json.loads(argument) if argument.startswith("[") else argument.split()
            elif instruction == "HEALTHCHECK":
                config["healthcheck"] = argument
            elif instruction == "COPY":
                config.setdefault("copies", []).append(argument)
        return config

    def context_copies(self) -> list[str]:
        """Sources that COPY instructions take from the build context (not --from another stage)."""
        sources = []
        for stage in self.stages:
            for instruction, argument in stage["instructions"]:
                if instruction == "COPY" and "--from=" not in argument:
                    words = [w for w in argument.split() if not w.startswith("--")]
                    sources += words[:-1]
        return sources


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile(DOCKERFILE.read_text())


def test_dockerfile_is_multi_stage_on_python_311_slim(dockerfile: Dockerfile) -> None:
    bases = [dockerfile.resolve_base(stage["base"], {}) for stage in dockerfile.stages]
    assert bases.count("python:3.11-slim") >= 2, f"build and runtime stages on python:3.11-slim: {bases}"
    build = " ".join(arg for ins, arg in dockerfile.stage("build")["instructions"] if ins == "RUN")
    assert "pip wheel" in build, "the build stage builds wheels"
    runtime = " ".join(arg for ins, arg in dockerfile.stage("runtime")["instructions"] if ins == "RUN")
    assert "venv /opt/venv" in runtime and "--no-index" in runtime and "/wheels" in runtime, (
        "the runtime stage installs the built wheels (and nothing from an index) into a venv"
    )
    assert "from=build" in runtime, "the runtime stage takes the wheels from the build stage"


def test_dockerfile_copies_only_what_the_context_keeps(dockerfile: Dockerfile) -> None:
    """A COPY of a file the ignore file drops, or that does not exist, fails `docker build`."""
    patterns = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def kept(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern):
                keep = negate
        return keep

    sources = dockerfile.context_copies()
    readme = PYPROJECT["project"]["readme"]
    assert {"pyproject.toml", readme, "proxy"} <= set(sources), (
        f"the wheel build needs pyproject.toml, {readme} (the project's readme) and proxy/: copies {sources}"
    )
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert kept(source), f"COPY {source}: excluded by deploy/Dockerfile.dockerignore"
    assert not kept("tests/test_deploy.py") and not kept(".venv"), "the ignore file keeps the context small"


@pytest.mark.parametrize("variant", ["none", "baked"])
def test_image_runs_memproxy_serve_as_non_root(dockerfile: Dockerfile, variant: str) -> None:
    config = dockerfile.config({"EMBED_MODEL": variant})
    assert "runtime" in config["stages"], f"EMBED_MODEL={variant}: the final image derives from the runtime stage"
    assert config["image"] == "python:3.11-slim"
    assert config.get("entrypoint") == ["memproxy"], config.get("entrypoint")
    assert "memproxy" in PYPROJECT["project"]["scripts"], "the entrypoint is the package's console script"
    assert config.get("cmd") == ["serve"], config.get("cmd")
    require_cli_command(config["cmd"][0])
    user = config.get("user", "root").split(":")[0]
    assert user.isdigit() and int(user) != 0, (
        f"USER {user!r}: Kubernetes' runAsNonRoot accepts only a numeric, non-zero user"
    )
    assert f"{PORT}" in [port.split("/")[0] for port in config["expose"]]
    env = config["env"]
    assert env.get("MEMPROXY_HOST") == "0.0.0.0", "inside a container the proxy must listen on all interfaces"
    assert env.get("MEMPROXY_PORT", str(PORT)) == str(PORT)
    assert env.get("MEMPROXY_DATA_DIR") == "/data" and "/data" in config["volume"]
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), "the venv's memproxy is on PATH"


def test_baked_image_points_memproxy_at_the_copied_model(dockerfile: Dockerfile) -> None:
    plain = dockerfile.config({"EMBED_MODEL": "none"})
    assert "MEMPROXY_EMBED_MODEL_PATH" not in plain["env"], "without a model, fastembed's default model is used"
    assert dockerfile.global_args.get("EMBED_MODEL") == "none", "a plain `docker build` needs no model"
    baked = dockerfile.config({"EMBED_MODEL": "baked"})
    path = baked["env"].get("MEMPROXY_EMBED_MODEL_PATH")
    assert path, "the baked variant sets MEMPROXY_EMBED_MODEL_PATH"
    destinations = [copy_.split()[-1].rstrip("/") for copy_ in baked.get("copies", []) if "embed-model" in copy_]
    assert destinations == [path.rstrip("/")], f"the model is copied to {destinations}, the setting says {path}"


def test_the_image_takes_the_packages_extras(dockerfile: Dockerfile) -> None:
    """``--build-arg EXTRAS=otel`` builds and installs memproxy[otel]; by default no extra."""
    assert dockerfile.global_args.get("EXTRAS") == '""', "no extra unless asked for"
    runs = {
        stage["name"]: " ".join(arg for op, arg in stage["instructions"] if op == "RUN") for stage in dockerfile.stages
    }
    assert '".[${EXTRAS}]"' in runs["build"] and '"memproxy[${EXTRAS}]"' in runs["runtime"]
    for name in ("build", "runtime"):
        [stage] = [stage for stage in dockerfile.stages if stage["name"] == name]
        assert ("ARG", "EXTRAS") in stage["instructions"], f"{name}: a stage sees a global ARG only if it names it"
    assert "otel" in PYPROJECT["project"]["optional-dependencies"]


def test_healthcheck_calls_healthz_without_curl(dockerfile: Dockerfile) -> None:
    healthcheck = dockerfile.config()["healthcheck"]
    assert "curl" not in healthcheck and "wget" not in healthcheck, "python:3.11-slim has neither curl nor wget"
    assert "urllib.request" in healthcheck
    match = re.search(r"http://127\.0\.0\.1:[^/]+(/\w+)", healthcheck)
    assert match, f"no local URL in HEALTHCHECK: {healthcheck}"
    assert match.group(1) == "/healthz" and "/healthz" in app_paths()
    assert "MEMPROXY_PORT" in healthcheck and f"'{PORT}'" in healthcheck, "it follows MEMPROXY_PORT, default 8080"


# --- docker-compose.yml ---------------------------------------------------------------------------------


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} over strings, lists and mappings."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = env.get(name, "")
        if op == ":-":
            return current or arg
        if op == ":?":
            if not current:
                raise LookupError(f"{name}: {arg}")
            return current
        assert op is None, f"unsupported interpolation {match.group(0)}"
        return current

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services(compose: dict, env: dict[str, str] | None = None) -> dict[str, Any]:
    required = {"MEMPROXY_SECRET": "s" * 64, "MEMPROXY_LLM_API_KEY": "sk-extraction"}
    return interpolate(compose["services"], {**required, **(env or {})})


def test_compose_has_the_four_services(compose: dict) -> None:
    assert set(compose["services"]) == {"proxy", "worker", "redis", "qdrant"}


def test_compose_memproxy_services_build_the_local_dockerfile(compose: dict) -> None:
    for name in ("proxy", "worker"):
        service = services(compose)[name]
        build = service["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT, f"{name}: the build context is the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
        assert service["image"] == "memproxy:local"


def test_compose_backing_services_use_official_images(compose: dict) -> None:
    svc = services(compose)
    assert svc["redis"]["image"].split(":")[0] == "redis" and svc["redis"]["image"].split(":")[1].startswith("7")
    assert svc["qdrant"]["image"].split(":")[0] == "qdrant/qdrant"
    assert "build" not in svc["redis"] and "build" not in svc["qdrant"]


def test_compose_proxy_publishes_port_8080(compose: dict) -> None:
    ports = services(compose)["proxy"]["ports"]
    assert [str(port).rsplit(":", 1)[-1] for port in ports] == [str(PORT)]
    assert ports == ["8080:8080"], "published on the host's 8080 by default"
    assert services(compose, {"PROXY_PORT": "9000"})["proxy"]["ports"] == ["9000:8080"]


def test_compose_healthchecks(compose: dict) -> None:
    svc = services(compose)
    for name in ("proxy", "redis", "qdrant"):
        test = svc[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        assert all(isinstance(word, str) for word in test), f"{name}: a healthcheck word parsed as YAML, not text"
    proxy_check = " ".join(svc["proxy"]["healthcheck"]["test"])
    assert f"127.0.0.1:{PORT}/healthz" in proxy_check and "/healthz" in app_paths()
    assert svc["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    qdrant_check = " ".join(svc["qdrant"]["healthcheck"]["test"])
    assert "/dev/tcp/127.0.0.1/6333" in qdrant_check and "GET /readyz" in qdrant_check
    assert "curl" not in qdrant_check and "wget" not in qdrant_check, "the qdrant image has neither"
    assert svc["worker"]["healthcheck"] == {"disable": True}, "the worker serves no /healthz"


def test_compose_memproxy_waits_for_healthy_backends(compose: dict) -> None:
    svc = services(compose)
    for name in ("proxy", "worker"):
        depends = svc[name]["depends_on"]
        assert set(depends) == {"redis", "qdrant"}, name
        for dependency, condition in depends.items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "test" in svc[dependency]["healthcheck"], f"service_healthy on {dependency} needs a healthcheck"


def test_compose_worker_runs_the_worker_command(compose: dict) -> None:
    svc = services(compose)
    assert svc["worker"]["command"] == ["worker"]
    assert "ports" not in svc["worker"]
    assert svc["proxy"]["command"] == ["serve"]
    require_cli_command("serve")
    require_cli_command("worker")


def test_compose_redis_persists_with_aof(compose: dict) -> None:
    redis = services(compose)["redis"]
    command = redis["command"]
    assert command[0] == "redis-server" and "--appendonly" in command
    assert command[command.index("--appendonly") + 1] == "yes"
    volumes = {volume.split(":")[1]: volume.split(":")[0] for volume in redis["volumes"]}
    assert volumes.get("/data") in compose["volumes"], "the AOF lives in a named volume at /data"
    qdrant_volumes = [volume.split(":") for volume in services(compose)["qdrant"]["volumes"]]
    assert ["qdrant-data", "/qdrant/storage"] in qdrant_volumes and "qdrant-data" in compose["volumes"]


def test_compose_environment_wires_the_backends_and_requires_the_secret(compose: dict) -> None:
    with pytest.raises(LookupError, match="MEMPROXY_SECRET"):
        interpolate(compose["services"], {})
    with pytest.raises(LookupError, match="MEMPROXY_LLM_API_KEY"):  # the worker cannot extract without it
        interpolate(compose["services"]["worker"], {"MEMPROXY_SECRET": "s" * 64})
    svc = services(compose)
    assert svc["worker"]["environment"]["MEMPROXY_LLM_API_KEY"] == "sk-extraction"
    assert "MEMPROXY_LLM_API_KEY" not in svc["proxy"]["environment"]  # proxies use their clients' keys
    for name in ("proxy", "worker"):
        env = svc[name]["environment"]
        assert env["MEMPROXY_SECRET"] == "s" * 64
        redis_host = re.match(r"redis://([^:/]+):(\d+)", env["MEMPROXY_REDIS_URL"])
        qdrant_host = re.match(r"http://([^:/]+):(\d+)", env["MEMPROXY_QDRANT_URL"])
        assert redis_host and redis_host.groups() == ("redis", "6379"), env["MEMPROXY_REDIS_URL"]
        assert qdrant_host and qdrant_host.groups() == ("qdrant", "6333"), env["MEMPROXY_QDRANT_URL"]
        assert {"/data"} == {volume.split(":")[1] for volume in svc[name]["volumes"]}
    overridden = services(compose, {"MEMPROXY_REDIS_URL": "redis://elsewhere:6380/1"})
    assert overridden["worker"]["environment"]["MEMPROXY_REDIS_URL"] == "redis://elsewhere:6380/1"
    named = {volume.split(":")[0] for service in svc.values() for volume in service.get("volumes", [])}
    assert named <= set(compose["volumes"]), "every volume a service mounts is declared"


# --- Kubernetes sidecar ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sidecar() -> dict[tuple[str, str], dict]:
    docs = [doc for doc in yaml.safe_load_all(SIDECAR.read_text()) if doc]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def pod_spec(objects: dict) -> dict:
    [deployment] = [doc for (kind, _), doc in objects.items() if kind == "Deployment"]
    return deployment["spec"]["template"]["spec"]


def container_env(container: dict, objects: dict) -> dict[str, str]:
    """Literal env of a container: its ConfigMaps (envFrom), then its own env values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(objects[("ConfigMap", source["configMapRef"]["name"])]["data"])
        if "secretRef" in source:
            env.update(objects[("Secret", source["secretRef"]["name"])].get("stringData", {}))
    env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
    return env


def test_sidecar_app_talks_to_memproxy_on_localhost(sidecar: dict) -> None:
    spec = pod_spec(sidecar)
    [memproxy] = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "memproxy"]
    [app] = [c for c in spec["containers"] if c["name"] != "memproxy"]
    port = memproxy["ports"][0]["containerPort"]
    env = container_env(memproxy, sidecar)
    assert int(env.get("MEMPROXY_PORT", PORT)) == port
    assert env["MEMPROXY_HOST"] == "0.0.0.0", "kubelet probes come to the pod IP, not to localhost"
    app_env = {item["name"]: item for item in app["env"]}
    assert app_env["OPENAI_BASE_URL"]["value"] == f"http://localhost:{port}/v1"
    assert "secretKeyRef" in app_env["OPENAI_API_KEY"]["valueFrom"], "the app's key stays in a Secret"


def test_sidecar_starts_before_the_app_and_keeps_running(sidecar: dict) -> None:
    spec = pod_spec(sidecar)
    init = {c["name"]: c for c in spec.get("initContainers", [])}
    if "memproxy" in init:
        # A plain init container must exit before the app starts: memproxy never does, the pod would hang.
        assert init["memproxy"].get("restartPolicy") == "Always", "memproxy as a native sidecar"
        assert "startupProbe" in init["memproxy"], "the app starts once memproxy answers"
    else:
        assert "memproxy" in {c["name"] for c in spec["containers"]}


def test_sidecar_probes_and_resources(sidecar: dict) -> None:
    spec = pod_spec(sidecar)
    [memproxy] = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "memproxy"]
    paths = app_paths()
    ports = {p.get("name"): p["containerPort"] for p in memproxy["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = memproxy[probe]["httpGet"]
        assert get["path"] == path and path in paths, f"{probe} on {get['path']}"
        assert get["port"] in ports or get["port"] in ports.values(), f"{probe} port {get['port']} is not exposed"
    resources = memproxy["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"], "memory request and limit"
    assert memproxy["args"] == ["serve"]
    require_cli_command("serve")


def image_user() -> tuple[int, int]:
    user, _, group = Dockerfile(DOCKERFILE.read_text()).config()["user"].partition(":")
    return int(user), int(group or user)


def test_sidecar_runs_non_root_on_a_read_only_root(sidecar: dict) -> None:
    spec = pod_spec(sidecar)
    [memproxy] = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "memproxy"]
    pod_security = spec["securityContext"]
    uid, gid = image_user()
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == uid
    assert pod_security["fsGroup"] == gid, "the data volume is writable by the image's user"
    assert memproxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert memproxy["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in memproxy["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    data_dir = container_env(memproxy, sidecar)["MEMPROXY_DATA_DIR"]
    for path in (data_dir, "/tmp"):
        assert path in mounts and mounts[path] in volumes, f"{path} must be a volume on a read-only root"
    claim = volumes[mounts[data_dir]].get("persistentVolumeClaim", {}).get("claimName")
    if claim:  # embedded storage on a PVC: the memories survive a restart
        assert ("PersistentVolumeClaim", claim) in sidecar
        deployment = next(doc for (kind, _), doc in sidecar.items() if kind == "Deployment")
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


def test_sidecar_config_sources_exist(sidecar: dict) -> None:
    spec = pod_spec(sidecar)
    for container in spec.get("initContainers", []) + spec["containers"]:
        for source in container.get("envFrom", []):
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            name = source.get("configMapRef", source.get("secretRef"))["name"]
            assert (kind, name) in sidecar, f"{container['name']} reads a {kind} {name} that is not defined"
    memproxy_secret = sidecar[("Secret", "my-app-memproxy")]["stringData"]
    assert "MEMPROXY_SECRET" in memproxy_secret, "the server secret lives in a Secret, not a ConfigMap"
    assert "MEMPROXY_TENANT" in sidecar[("ConfigMap", "my-app-memproxy")]["data"]


# --- Helm chart: a minimal renderer for the subset of Go templates the chart uses ------------------------


class TemplateError(Exception):
    """The template uses something this renderer does not know, or names a missing value."""


class RenderFailed(Exception):
    """The chart itself refused to render (``fail`` / ``required``), as `helm template` would."""


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+)|(?P<field>\$?(?:\.[A-Za-z_]\w*)+|\.|\$)'
    r"|(?P<ident>[A-Za-z_]\w*)|(?P<op>[()|]))"
)


def _lex(source: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    position, trim_next = 0, False
    for match in _ACTION.finditer(source):
        text = source[position : match.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        out += [("text", text), ("action", match.group(2).strip())]
        trim_next, position = bool(match.group(3)), match.end()
    text = source[position:]
    out.append(("text", text.lstrip(" \t\r\n") if trim_next else text))
    return out


def _parse(tokens: list, i: int, defines: dict) -> tuple[list, int, str | None]:
    nodes: list = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        if value.startswith("/*"):
            i += 1
            continue
        word = value.split(None, 1)[0] if value else ""
        if word in ("end", "else"):
            return nodes, i, value
        if word == "if":
            branches, condition = [], value[2:].strip()
            i += 1
            while True:
                body, i, stopper = _parse(tokens, i, defines)
                branches.append((condition, body))
                if stopper == "end":
                    i += 1
                    break
                if stopper and stopper.startswith("else if "):
                    condition = stopper[len("else if ") :].strip()
                elif stopper == "else":
                    condition = None
                else:
                    raise TemplateError(f"unterminated if: {stopper}")
                i += 1
            nodes.append(("if", branches))
        elif word == "define":
            name = json.loads(value[len("define") :].strip())
            body, i, stopper = _parse(tokens, i + 1, defines)
            if stopper != "end":
                raise TemplateError(f"unterminated define {name}")
            defines[name] = body
            i += 1
        elif word in ("range", "with", "template", "block", "break", "continue") or "=" in value.split('"')[0]:
            raise TemplateError(f"the test renderer does not support {{{{ {value} }}}}")
        else:
            nodes.append(("expr", value))
            i += 1
    return nodes, i, None


def _tokenize(expression: str) -> list:
    tokens, position = [], 0
    stack: list[list] = [tokens]
    expression = expression.strip()
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if not match or match.end() == position:
            raise TemplateError(f"cannot read {expression!r} at {position}")
        position = match.end()
        if match.group("op") == "(":
            group: list = []
            stack[-1].append(("group", group))
            stack.append(group)
        elif match.group("op") == ")":
            stack.pop()
        elif match.group("op") == "|":
            stack[-1].append(("pipe", "|"))
        else:
            kind = next(k for k in ("str", "num", "field", "ident") if match.group(k) is not None)
            stack[-1].append((kind, match.group(kind)))
    if len(stack) != 1:
        raise TemplateError(f"unbalanced parentheses in {expression!r}")
    return tokens


def _truthy(value: Any) -> bool:
    return bool(value)  # Go templates: false, 0, nil and empty strings/collections are false


def _go_format(fmt: str, *args: Any) -> str:
    values = iter(args)
    return re.sub(r"%[sdv]", lambda _: _to_text(next(values)), fmt)


def _to_text(value: Any) -> str:
    if value is None:
        return ""  # helm renders <no value> as an empty string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise TemplateError(f"printing a collection ({value!r}): use toYaml")
    return str(value)


def _indent(width: int, text: str) -> str:
    pad = " " * width
    return pad + text.replace("\n", "\n" + pad)


def _required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise RenderFailed(message)
    return value


def _fail(message: str) -> None:
    raise RenderFailed(message)


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True, allow_unicode=True).rstrip("\n")


class Renderer:
    FUNCTIONS: ClassVar[dict[str, Any]] = {
        "quote": lambda v: "" if v is None else json.dumps(_to_text(v), ensure_ascii=False),
        "default": lambda d, v=None: v if _truthy(v) else d,
        "toYaml": _to_yaml,
        "nindent": lambda n, text: "\n" + _indent(n, text),
        "indent": _indent,
        "printf": _go_format,
        "trunc": lambda n, s: s[:n],
        "trimSuffix": lambda suffix, s: s[: -len(suffix)] if suffix and s.endswith(suffix) else s,
        "contains": lambda sub, s: sub in s,
        "not": lambda v: not _truthy(v),
        "and": lambda *vs: next((v for v in vs if not _truthy(v)), vs[-1]),
        "or": lambda *vs: next((v for v in vs if _truthy(v)), vs[-1]),
        "eq": lambda a, *bs: any(a == b for b in bs),
        "required": _required,
        "fail": _fail,
    }

    def __init__(self, helpers: str) -> None:
        self.defines: dict[str, list] = {}
        _parse(_lex(helpers), 0, self.defines)

    def render(self, source: str, context: dict) -> str:
        nodes, _, stopper = _parse(_lex(source), 0, self.defines)
        if stopper is not None:
            raise TemplateError(f"stray {{{{ {stopper} }}}}")
        return self._nodes(nodes, context)

    def _nodes(self, nodes: list, context: Any) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "expr":
                out.append(_to_text(self._pipeline(_tokenize(node[1]), context)))
            else:
                for condition, body in node[1]:
                    if condition is None or _truthy(self._pipeline(_tokenize(condition), context)):
                        out.append(self._nodes(body, context))
                        break
        return "".join(out)

    def _pipeline(self, tokens: list, context: Any) -> Any:
        commands: list[list] = [[]]
        for token in tokens:
            if token[0] == "pipe":
                commands.append([])
            else:
                commands[-1].append(token)
        value, piped = None, False
        for command in commands:
            value, piped = self._command(command, context, value, piped), True
        return value

    def _command(self, command: list, context: Any, piped_value: Any, piped: bool) -> Any:
        if not command:
            raise TemplateError("empty command in a pipeline")
        head = command[0]
        if head[0] == "ident" and head[1] not in ("true", "false", "nil"):
            args = [self._operand(token, context) for token in command[1:]]
            if piped:
                args.append(piped_value)
            if head[1] == "include":
                name, argument = args
                return self._nodes(self.defines[name], argument)
            if head[1] not in self.FUNCTIONS:
                raise TemplateError(f"the test renderer does not know the function {head[1]!r}")
            return self.FUNCTIONS[head[1]](*args)
        if len(command) != 1 or piped:
            raise TemplateError(f"cannot call a non-function: {command}")
        return self._operand(head, context)

    def _operand(self, token: tuple, context: Any) -> Any:
        kind, value = token
        if kind == "str":
            return json.loads(value)
        if kind == "num":
            return int(value)
        if kind == "group":
            return self._pipeline(value, context)
        if kind == "ident":
            return {"true": True, "false": False, "nil": None}[value]
        if kind == "field":
            if value in (".", "$"):
                return context
            current = context
            for part in value.lstrip("$").strip(".").split("."):
                if not isinstance(current, dict) or part not in current:
                    raise TemplateError(f"{value}: no {part!r} (values.yaml must define every value a template names)")
                current = current[part]
            return current
        raise TemplateError(f"unexpected {token}")


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


VALID_SECRET = {"secret": {"serverSecret": "0123456789abcdef" * 4}}
WORKER = {  # extraction workers of their own: Redis (their job queue), Qdrant with it, and their key
    "worker": {"enabled": True},
    "secret": {"serverSecret": "0123456789abcdef" * 4, "llmApiKey": "sk-extraction"},
    "redis": {"url": "redis://redis.memory.svc:6379/0"},
    "qdrant": {"url": "http://qdrant.memory.svc:6333"},
}


def render_chart(overrides: dict | None = None, release: str = "demo", namespace: str = "memory") -> dict[str, str]:
    """``helm template``: template file name -> rendered text (NOTES.txt included)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), overrides or {})
    context = {
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
    }
    templates = CHART / "templates"
    renderer = Renderer((templates / "_helpers.tpl").read_text())
    return {
        path.name: renderer.render(path.read_text(), context)
        for path in sorted(templates.iterdir())
        if not path.name.startswith("_")
    }


def chart_objects(overrides: dict | None = None, **kwargs: Any) -> dict[tuple[str, str], dict]:
    objects = {}
    for name, text in render_chart(overrides, **kwargs).items():
        if name == "NOTES.txt":
            continue
        for document in yaml.safe_load_all(text):
            if document:
                key = (document["kind"], document["metadata"]["name"])
                assert key not in objects, f"{key} rendered twice"
                objects[key] = document
    return objects


def test_renderer_follows_go_template_whitespace_and_functions() -> None:
    """Reference outputs of Go's text/template (+ sprig) for the constructs the chart uses."""
    renderer = Renderer('{{- define "n" -}}\n{{ .a }}-x\n{{- end -}}')
    cases = [
        ("a:\n  {{- if .t }}\n  b: 1\n  {{- end }}\nc: 2\n", {"t": True}, "a:\n  b: 1\nc: 2\n"),
        ("a:\n  {{- if .f }}\n  b: 1\n  {{- end }}\nc: 2\n", {"f": False}, "a:\nc: 2\n"),
        ("k:\n  {{- toYaml .m | nindent 2 }}\n", {"m": {"b": [1], "a": "x"}}, "k:\n  a: x\n  b:\n  - 1\n"),
        ('{{ include "n" . }}/{{ .a | quote }}', {"a": "v"}, 'v-x/"v"'),
        ('{{ .e | default "d" }} {{ printf "%s-%s" .a "b" | trunc 3 | trimSuffix "-" }}', {"e": "", "a": "v"}, "d v-b"),
        ("{{ if and .a (not .e) }}y{{ else if .a }}n{{ else }}z{{ end }}", {"a": 1, "e": ""}, "y"),
    ]
    for source, context, expected in cases:
        assert renderer.render(source, context) == expected, source
    with pytest.raises(TemplateError):
        renderer.render("{{ .missing }}", {})
    with pytest.raises(TemplateError):
        renderer.render("{{ range .a }}{{ end }}", {"a": []})
    with pytest.raises(RenderFailed, match="boom"):
        renderer.render('{{ required "boom" .e }}', {"e": ""})


def test_chart_version_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "memproxy"
    assert chart["appVersion"] == PYPROJECT["project"]["version"], "appVersion is the default image tag"


def test_chart_default_render_has_proxy_worker_service_config_secret() -> None:
    objects = chart_objects(VALID_SECRET)
    assert set(objects) == {
        ("ConfigMap", "demo-memproxy"),
        ("Secret", "demo-memproxy"),
        ("Service", "demo-memproxy"),
        ("Deployment", "demo-memproxy-proxy"),
    }, "no HorizontalPodAutoscaler unless autoscaling.enabled, no worker Deployment unless worker.enabled"


def _container(deployment: dict) -> dict:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_chart_proxy_deployment() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    proxy_resources = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "3Gi"}}
    objects = chart_objects(deep_merge(VALID_SECRET, {"proxy": {"resources": proxy_resources}}))
    deployment = objects[("Deployment", "demo-memproxy-proxy")]
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["replicas"] == values["proxy"]["replicas"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    container = _container(deployment)
    assert container["image"] == f"memproxy:{PYPROJECT['project']['version']}"
    assert container["args"] == ["serve"]
    require_cli_command("serve")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": PORT}
    config = objects[("ConfigMap", "demo-memproxy")]["data"]
    assert config["MEMPROXY_PORT"] == str(PORT) and config["MEMPROXY_HOST"] == "0.0.0.0"
    paths = app_paths()
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
        assert path in paths
    assert container["resources"] == proxy_resources
    worker = _container(
        chart_objects(deep_merge(WORKER, {"proxy": {"resources": proxy_resources}}))[
            ("Deployment", "demo-memproxy-worker")
        ]
    )
    assert worker["resources"] == values["worker"]["resources"], "proxy and worker are sized separately"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["fsGroup"]) == image_user()
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {config["MEMPROXY_DATA_DIR"], "/tmp"} <= mounts, "writable paths on a read-only root"
    sources = [next(iter(source.values()))["name"] for source in container["envFrom"]]
    assert sources == ["demo-memproxy", "demo-memproxy"], "ConfigMap first, then the Secret (its keys win)"


def test_chart_worker_deployment() -> None:
    objects = chart_objects(deep_merge(WORKER, {"worker": {"replicas": 3}}))
    worker = objects[("Deployment", "demo-memproxy-worker")]
    assert worker["spec"]["replicas"] == 3
    container = _container(worker)
    assert container["args"] == ["worker"]
    assert "ports" not in container and "livenessProbe" not in container, "the worker serves no HTTP"
    assert [next(iter(s.values()))["name"] for s in container["envFrom"]] == ["demo-memproxy", "demo-memproxy"]
    key = {
        "name": "MEMPROXY_LLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "demo-memproxy", "key": "MEMPROXY_LLM_API_KEY"}},
    }
    assert container["env"] == [key], "required from the Secret: a Secret without it keeps the pod from starting"
    assert objects[("Secret", "demo-memproxy")]["stringData"]["MEMPROXY_LLM_API_KEY"] == "sk-extraction"
    without_worker = chart_objects(deep_merge(WORKER, {"worker": {"enabled": False}}))
    assert ("Deployment", "demo-memproxy-worker") not in without_worker
    require_cli_command("worker")


def test_chart_worker_is_off_by_default_and_refuses_to_render_without_its_key_or_redis() -> None:
    """A worker without MEMPROXY_LLM_API_KEY exits at start: enabled by default it crash-looped."""
    assert yaml.safe_load((CHART / "values.yaml").read_text())["worker"]["enabled"] is False
    assert ("Deployment", "demo-memproxy-worker") not in chart_objects(VALID_SECRET)
    no_key = deep_merge(WORKER, {"secret": {"llmApiKey": ""}})
    with pytest.raises(RenderFailed, match="MEMPROXY_LLM_API_KEY"):
        chart_objects(no_key)
    existing = deep_merge(no_key, {"secret": {"serverSecret": "", "existingSecret": "memproxy-keys"}})
    env = _container(chart_objects(existing)[("Deployment", "demo-memproxy-worker")])["env"]
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": "memproxy-keys", "key": "MEMPROXY_LLM_API_KEY"}
    embedded = deep_merge(VALID_SECRET, {"worker": {"enabled": True}, "secret": {"llmApiKey": "sk-extraction"}})
    with pytest.raises(RenderFailed, match="needs Redis"):
        chart_objects(embedded)


def test_chart_service_selects_only_proxy_pods() -> None:
    objects = chart_objects(deep_merge(WORKER, {"service": {"port": 80}}))
    service = objects[("Service", "demo-memproxy")]
    [port] = service["spec"]["ports"]
    assert port["port"] == 80 and port["targetPort"] == "http"
    selector = service["spec"]["selector"].items()
    proxy_labels = objects[("Deployment", "demo-memproxy-proxy")]["spec"]["template"]["metadata"]["labels"]
    worker_labels = objects[("Deployment", "demo-memproxy-worker")]["spec"]["template"]["metadata"]["labels"]
    assert selector <= proxy_labels.items(), "the Service reaches the proxy pods"
    assert not selector <= worker_labels.items(), "the Service must not send traffic to worker pods"
    worker_selector = objects[("Deployment", "demo-memproxy-worker")]["spec"]["selector"]["matchLabels"].items()
    assert not worker_selector <= proxy_labels.items(), "the two Deployments must not select each other's pods"
    notes = render_chart(deep_merge(VALID_SECRET, {"service": {"port": 80}}))["NOTES.txt"]
    assert "OPENAI_BASE_URL=http://demo-memproxy.memory.svc:80/v1" in notes


def test_chart_hpa() -> None:
    overrides = deep_merge(
        VALID_SECRET,
        {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 7, "targetCPUUtilizationPercentage": 55}},
    )
    objects = chart_objects(overrides)
    hpa = objects[("HorizontalPodAutoscaler", "demo-memproxy-proxy")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo-memproxy-proxy"}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 7)
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["averageUtilization"] == 55
    proxy = objects[("Deployment", "demo-memproxy-proxy")]
    assert "replicas" not in proxy["spec"], "with an HPA the Deployment must not pin replicas"
    assert _container(proxy)["resources"]["requests"]["cpu"], "CPU utilization needs a CPU request"


def test_chart_backends_and_secret_refs() -> None:
    overrides = {
        "redis": {"url": "redis://redis.memory.svc:6379/0"},
        "qdrant": {"url": "http://qdrant.memory.svc:6333"},
        "tenant": "acme",
        "secret": {"existingSecret": "memproxy-keys"},
        "worker": {"enabled": True},
    }
    objects = chart_objects(overrides)
    config = objects[("ConfigMap", "demo-memproxy")]["data"]
    assert config["MEMPROXY_REDIS_URL"] == "redis://redis.memory.svc:6379/0"
    assert config["MEMPROXY_QDRANT_URL"] == "http://qdrant.memory.svc:6333"
    assert config["MEMPROXY_TENANT"] == "acme"
    assert not [key for key in objects if key[0] == "Secret"], "an existing Secret is used, none is created"
    for name in ("demo-memproxy-proxy", "demo-memproxy-worker"):
        sources = _container(objects[("Deployment", name)])["envFrom"]
        refs = [source["secretRef"]["name"] for source in sources if "secretRef" in source]
        assert refs == ["memproxy-keys"], name
    assert set(config) <= setting_names(), f"ConfigMap keys that are no settings: {set(config) - setting_names()}"
    unset = chart_objects(VALID_SECRET)[("ConfigMap", "demo-memproxy")]["data"]
    assert "MEMPROXY_REDIS_URL" not in unset and "MEMPROXY_TENANT" not in unset, "empty values set nothing"
    assert "WARNING: redis.url is empty" in render_chart(VALID_SECRET)["NOTES.txt"]


def test_chart_created_secret_holds_what_values_give() -> None:
    overrides = deep_merge(VALID_SECRET, {"secret": {"adminToken": "tok", "llmApiKey": "sk-extraction"}})
    secret = chart_objects(overrides)[("Secret", "demo-memproxy")]
    expected = {
        "MEMPROXY_SECRET": VALID_SECRET["secret"]["serverSecret"],
        "MEMPROXY_ADMIN_TOKEN": "tok",
        "MEMPROXY_LLM_API_KEY": "sk-extraction",
    }
    assert secret["stringData"] == expected, "only the values given, no empty keys"


def test_chart_refuses_to_render_without_a_server_secret() -> None:
    with pytest.raises(RenderFailed, match="MEMPROXY_SECRET"):
        chart_objects()


def test_chart_extra_env_and_pull_secrets() -> None:
    extra = {"name": "MEMPROXY_MEMORY_TOP_K", "value": "4"}
    overrides = deep_merge(WORKER, {"extraEnv": [extra], "imagePullSecrets": [{"name": "regcred"}]})
    objects = chart_objects(overrides)
    for name in ("demo-memproxy-proxy", "demo-memproxy-worker"):
        deployment = objects[("Deployment", name)]
        assert _container(deployment)["env"][-1:] == [extra], name
        assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert [item["name"] for item in _container(objects[("Deployment", "demo-memproxy-worker")])["env"]] == [
        "MEMPROXY_LLM_API_KEY",
        "MEMPROXY_MEMORY_TOP_K",
    ]


def test_chart_names_fit_kubernetes_limits() -> None:
    objects = chart_objects(WORKER, release="x" * 70)
    for kind, name in objects:
        assert len(name) <= 63 + len("-worker"), (kind, name)
    assert ("Service", "x" * 63) in objects, "the release name is cut to 63 characters"
    assert ("Service", "memproxy") in chart_objects(VALID_SECRET, release="memproxy"), "no memproxy-memproxy"


# --- one user's data is never split across replicas ------------------------------------------------------
# Shared Redis state with per-pod embedded memories, or a shared Qdrant with per-pod SQLite state, gives
# each replica its own half of a user: memproxy refuses to start so (proxy.config.split_problem), and the
# chart refuses to render so.

REDIS = {"redis": {"url": "redis://redis.memory.svc:6379/0"}}
QDRANT = {"qdrant": {"url": "http://qdrant.memory.svc:6333"}}


def test_the_chart_refuses_redis_without_qdrant_and_qdrant_without_redis() -> None:
    with pytest.raises(RenderFailed, match="qdrant.url"):
        chart_objects(deep_merge(VALID_SECRET, REDIS))
    with pytest.raises(RenderFailed, match="redis.url"):
        chart_objects(deep_merge(VALID_SECRET, QDRANT))
    in_secret = {"redis": {"urlInSecret": True}}
    with pytest.raises(RenderFailed, match="existingSecret"):
        chart_objects(deep_merge(deep_merge(VALID_SECRET, QDRANT), in_secret))
    with pytest.raises(RenderFailed, match="qdrant.url"):
        chart_objects(deep_merge({"secret": {"existingSecret": "keys"}}, in_secret))
    values = deep_merge(deep_merge({"secret": {"existingSecret": "keys"}}, QDRANT), in_secret)
    config = chart_objects(values)[("ConfigMap", "demo-memproxy")]["data"]
    assert "MEMPROXY_REDIS_URL" not in config, "the Secret holds it"
    assert "WARNING: redis.url" not in render_chart(values)["NOTES.txt"]
    chart_objects(deep_merge(deep_merge(VALID_SECRET, REDIS), QDRANT))  # both shared: fine


def settings_of(env: dict[str, Any]):
    from proxy.config import Settings

    values = {name.removeprefix("MEMPROXY_").lower(): value for name, value in env.items() if name in setting_names()}
    return Settings(**values)


def test_every_shipped_configuration_is_one_memproxy_starts_with(compose: dict, sidecar: dict) -> None:
    from proxy.config import split_problem

    configs = {
        "chart, embedded": chart_objects(VALID_SECRET)[("ConfigMap", "demo-memproxy")]["data"],
        "chart, scaled out": chart_objects(deep_merge(deep_merge(VALID_SECRET, REDIS), QDRANT))[
            ("ConfigMap", "demo-memproxy")
        ]["data"],
        "sidecar": sidecar[("ConfigMap", "my-app-memproxy")]["data"],
        **{f"compose {name}": services(compose)[name]["environment"] for name in ("proxy", "worker")},
    }
    for name, env in configs.items():
        assert split_problem(settings_of(env)) is None, name


def test_readiness_probes_wait_for_forwarding_not_for_memory(sidecar: dict, tmp_path: Path) -> None:
    """Helm and the sidecar probe /readyz: 200 as soon as the pod forwards, with memory down too."""
    from conftest import settings_without_model
    from starlette.testclient import TestClient

    from proxy.app import create_app

    spec = pod_spec(sidecar)
    [memproxy] = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "memproxy"]
    proxy = _container(chart_objects(VALID_SECRET)[("Deployment", "demo-memproxy-proxy")])
    probes = {memproxy["readinessProbe"]["httpGet"]["path"], proxy["readinessProbe"]["httpGet"]["path"]}
    assert probes == {"/readyz"}

    with TestClient(create_app(settings_without_model(tmp_path))) as client:  # memory stays down
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["forwarding"] == "ok"
        assert ready.json()["checks"]["memory"] != "ok" and ready.json()["memory_ready"] is False
        assert client.get("/readyz/memory").status_code == 503


# --- a fixed tenant comes with the admin token, from a Secret --------------------------------------------
# With MEMPROXY_TENANT a key names no tenant, so the memory API answers only MEMPROXY_ADMIN_TOKEN (and
# nobody without it): a manifest that fixes the tenant must set the token, and from a Secret.


def env_origins(container: dict, objects: dict) -> dict[str, str]:
    """Where each variable of a container comes from: ``configmap``, ``secret`` or ``literal`` (later wins).

    A Secret the manifests do not define (an operator's existing one) contributes keys nobody can list.
    """
    origins: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            origins.update(dict.fromkeys(objects[("ConfigMap", source["configMapRef"]["name"])]["data"], "configmap"))
        secret = objects.get(("Secret", source.get("secretRef", {}).get("name")))
        if secret is not None:
            origins.update(dict.fromkeys({**secret.get("stringData", {}), **secret.get("data", {})}, "secret"))
    for item in container.get("env", []):
        reference = item.get("valueFrom", {})
        if "secretKeyRef" in reference:
            secret = objects.get(("Secret", reference["secretKeyRef"]["name"]))
            if secret is not None:
                keys = {**secret.get("stringData", {}), **secret.get("data", {})}
                assert reference["secretKeyRef"]["key"] in keys, f"{item['name']}: the Secret lacks the key"
            origins[item["name"]] = "secret"
        else:
            origins[item["name"]] = "configmap" if "configMapKeyRef" in reference else "literal"
    return origins


def assert_a_fixed_tenant_comes_with_the_admin_token(objects: dict) -> None:
    pods = [doc["spec"]["template"]["spec"] for (kind, _), doc in objects.items() if kind == "Deployment"]
    servers = [
        c for pod in pods for c in pod.get("initContainers", []) + pod["containers"] if c.get("args") == ["serve"]
    ]
    assert servers, "no container runs `memproxy serve`"
    for container in servers:
        origins = env_origins(container, objects)
        assert "MEMPROXY_TENANT" in origins, "this manifest fixes the tenant"
        assert origins.get("MEMPROXY_ADMIN_TOKEN") == "secret", (
            f"{container['name']}: a fixed tenant needs MEMPROXY_ADMIN_TOKEN from a Secret, "
            f"got {origins.get('MEMPROXY_ADMIN_TOKEN')}"
        )


def test_the_sidecar_that_fixes_the_tenant_also_sets_the_admin_token_from_a_secret(sidecar: dict) -> None:
    assert_a_fixed_tenant_comes_with_the_admin_token(sidecar)


@pytest.mark.parametrize(
    "secret", [{"serverSecret": "0123456789abcdef" * 4, "adminToken": "tok"}, {"existingSecret": "memproxy-keys"}]
)
def test_the_chart_with_a_fixed_tenant_sets_the_admin_token_from_a_secret(secret: dict) -> None:
    objects = chart_objects({"tenant": "acme", "secret": secret})
    assert_a_fixed_tenant_comes_with_the_admin_token(objects)
    with_worker = deep_merge(WORKER, {"tenant": "acme", "secret": {**secret, "llmApiKey": "sk-extraction"}})
    if "existingSecret" in secret:
        with_worker["secret"] = secret
    worker = _container(chart_objects(with_worker)[("Deployment", "demo-memproxy-worker")])
    names = [item["name"] for item in worker["env"]]
    assert names == ["MEMPROXY_LLM_API_KEY"], "the worker serves no memory API: no admin token"
    notes = render_chart({"tenant": "acme", "secret": secret})["NOTES.txt"]
    assert "MEMPROXY_ADMIN_TOKEN" in notes and "Authorization: Bearer" in notes
    extra = [{"name": "MEMPROXY_MEMORY_TOP_K", "value": "4"}]
    env = _container(
        chart_objects({"tenant": "acme", "secret": secret, "extraEnv": extra})[("Deployment", "demo-memproxy-proxy")]
    )["env"]
    assert [item["name"] for item in env] == ["MEMPROXY_ADMIN_TOKEN", "MEMPROXY_MEMORY_TOP_K"], "extraEnv is kept"


def test_the_chart_refuses_a_fixed_tenant_without_an_admin_token() -> None:
    with pytest.raises(RenderFailed, match="MEMPROXY_ADMIN_TOKEN"):
        chart_objects(deep_merge(VALID_SECRET, {"tenant": "acme"}))
    assert "MEMPROXY_ADMIN_TOKEN" not in render_chart(VALID_SECRET)["NOTES.txt"], "no fixed tenant, no note"


def test_compose_fixes_a_tenant_only_with_a_required_admin_token(compose: dict) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        if "MEMPROXY_TENANT" in env:
            token = str(env.get("MEMPROXY_ADMIN_TOKEN", ""))
            assert token.startswith("${MEMPROXY_ADMIN_TOKEN:?"), f"{name}: a fixed tenant requires the admin token"


@pytest.mark.skipif(
    shutil.which("helm") is None, reason="no helm binary on PATH: the chart is rendered by the test's renderer"
)
@pytest.mark.parametrize("given", [VALID_SECRET, WORKER], ids=["default", "worker"])
def test_helm_lint_and_template(tmp_path: Path, given: dict) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(given))
    subprocess.run(["helm", "lint", str(CHART), "-f", str(values)], check=True, capture_output=True)
    result = subprocess.run(
        ["helm", "template", "demo", str(CHART), "-f", str(values), "--namespace", "memory"],
        check=True,
        capture_output=True,
        text=True,
    )
    documents = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}
    assert set(documents) == set(chart_objects(given)), "helm and the test renderer agree on the objects"


@pytest.mark.skipif(
    shutil.which("helm") is None, reason="no helm binary on PATH: the chart is rendered by the test's renderer"
)
def test_helm_refuses_a_worker_without_its_key(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(deep_merge(WORKER, {"secret": {"llmApiKey": ""}})))
    result = subprocess.run(
        ["helm", "template", "demo", str(CHART), "-f", str(values)], check=False, capture_output=True, text=True
    )
    assert result.returncode != 0 and "MEMPROXY_LLM_API_KEY" in result.stderr
