#!/usr/bin/env python3
"""The checks of tests/deploy/check that need a parser: deploy/ against the
agent's own source (metric names, configuration keys, environment names, CLI
flags, built-in policies) and against the Kubernetes, Helm and Compose
schemas. Run by tests/deploy/check with its tool venv's python (PyYAML,
kubernetes-validate, helm-python-sdk); prints one line per check:
`ok   NAME` or `FAIL NAME: why`.

    check.py ROOT PROMTOOL
"""

import copy
import fnmatch
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import traceback

import yaml

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
PROMTOOL = sys.argv[2] if len(sys.argv) > 2 else "promtool"
DEPLOY = os.path.join(ROOT, "deploy")
failures = 0


def path(*p):
    return os.path.join(ROOT, *p)


def read(*p):
    with open(path(*p), encoding="utf-8") as f:
        return f.read()


class Fail(Exception):
    pass


def need(cond, message):
    if not cond:
        raise Fail(message)


def check(name):
    def run(fn):
        global failures
        try:
            fn()
            print(f"ok   {name}", flush=True)
        except Fail as e:
            failures += 1
            print(f"FAIL {name}: {e}", flush=True)
        except Exception as e:  # a crash of a check is a failure too
            failures += 1
            last = traceback.extract_tb(e.__traceback__)[-1]
            print(f"FAIL {name}: {type(e).__name__}: {e} (check.py:{last.lineno})", flush=True)
        return fn
    return run


# ---------------------------------------------------------------- the agent

def metric_names():
    """The Prometheus names /metrics can show, derived as metrics.rs derives
    them (Desc::prometheus_name and render_prometheus): /metrics shows that
    registry and nothing else."""
    src = read("host/src/telemetry/metrics.rs")
    fn = re.search(r"fn prometheus_name\(&self\) -> String \{(.*?)\n    \}", src, re.S)
    need(fn, "metrics.rs: no Desc::prometheus_name to derive names from")
    body = fn.group(1)
    need("replace('.', \"_\")" in body, "metrics.rs: prometheus_name no longer maps dots to underscores")
    units = dict(re.findall(r'"([^"]+)"\s*=>\s*n\.push_str\("(\w+)"\)', body))
    counter = re.search(r'Kind::Counter\s*\{\s*n\.push_str\("(\w+)"\)', body)
    need(units and counter, "metrics.rs: prometheus_name has no unit suffixes or counter suffix")
    descs = {
        ident: (name, unit, kind)
        for ident, name, unit, kind in re.findall(
            r'metric!\(\s*(\w+),\s*"([^"]+)",\s*"([^"]*)",\s*(\w+),', src)
    }
    listed = re.search(r"pub const ALL: &\[&Desc\] = &\[(.*?)\];", src, re.S)
    need(descs and listed, "metrics.rs: no metric!() descriptions or no ALL list")
    suffixes = re.findall(r'"\{name\}(_\w+)\{\}', src)  # render_prometheus: _bucket, _sum, _count
    need({"_bucket", "_sum", "_count"} <= set(suffixes), "metrics.rs: histogram series suffixes not found")
    names = {}
    for ident in re.findall(r"\w+", listed.group(1)):
        need(ident in descs, f"metrics.rs: ALL names {ident}, which no metric!() describes")
        name, unit, kind = descs[ident]
        n = name.replace(".", "_") + units.get(unit, "")
        if kind == "Counter":
            n += counter.group(1)
        if kind == "Histogram":
            names[n] = "histogram"  # the family: queried only by its series
            for s in ("_bucket", "_sum", "_count"):
                names[n + s] = f"{ident} (histogram)"
        else:
            names[n] = f"{ident} ({kind.lower()})"
    return names


def config_schema():
    """Sections and keys of the configuration file, from config/raw.rs'
    Raw* structs (deny_unknown_fields: any other key stops the agent)."""
    src = read("host/src/config/raw.rs")
    structs = {}
    for name, body in re.findall(r"struct (Raw\w+) \{(.*?)\n\}", src, re.S):
        fields = {}
        rename = None
        for line in body.splitlines():
            line = line.strip()
            m = re.search(r'rename = "([^"]+)"', line)
            if line.startswith("#["):
                rename = m.group(1) if m else rename
                continue
            f = re.match(r"(?:pub(?:\([\w:]+\))?\s+)?(\w+):\s*(.+?),?$", line)
            if f:
                fields[rename or f.group(1)] = f.group(2)
                rename = None
        structs[name] = fields
    need("RawConfig" in structs, "config/raw.rs: no RawConfig")
    schema = {}
    for section, ty in structs["RawConfig"].items():
        inner = re.search(r"(Raw\w+)", ty).group(1)
        schema[section] = (ty.startswith("Vec<"), set(structs[inner]))
    return schema


def validate_config(text, where, partial=False):
    """Checks a configuration file's keys against config_schema(); returns it parsed."""
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise Fail(f"{where}: not TOML: {e}")
    schema = config_schema()
    for section, value in cfg.items():
        need(section in schema, f"{where}: unknown section [{section}] (the agent knows {sorted(schema)})")
        is_list, keys = schema[section]
        tables = value if is_list else [value]
        need(isinstance(tables, list) and all(isinstance(t, dict) for t in tables),
             f"{where}: [{'[' if is_list else ''}{section}{']' if is_list else ''}] has the wrong shape")
        for t in tables:
            for k in t:
                need(k in keys, f"{where}: unknown key {section}.{k} (known: {', '.join(sorted(keys))})")
    store = cfg.get("store", {}).get("url")
    need(store is None or re.match(r"^(file:///|s3://)", store), f"{where}: store.url {store!r}: file:/// or s3://")
    if not partial:
        need(store, f"{where}: no store.url")
        need(cfg.get("source"), f"{where}: no [[source]]")
        for i, s in enumerate(cfg["source"]):
            need(s.get("name") and s.get("urls") and s.get("backup"),
                 f"{where}: source[{i}] needs name, urls and backup")
    return cfg


def listen_port(cfg, where):
    listen = cfg.get("agent", {}).get("listen", "127.0.0.1:9187")
    host, _, port = listen.rpartition(":")
    need(host not in ("127.0.0.1", "localhost", "[::1]"),
         f"{where}: agent.listen {listen} is loopback: probes and scrapers from outside cannot reach it")
    return int(port)


def known_env_names():
    names = set()
    for f in glob.glob(path("host/src/**/*.rs"), recursive=True):
        with open(f, encoding="utf-8") as fh:
            names |= set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', fh.read()))
    # Read by the OpenTelemetry SDK, the C library or Kubernetes' own helpers here.
    return names | {"OTEL_RESOURCE_ATTRIBUTES", "TMPDIR", "LANG", "NODE_NAME", "POD_NAME"}


def need_known_env(names, where):
    unknown = sorted(set(names) - known_env_names())
    need(not unknown, f"{where}: environment names the agent never reads: {', '.join(unknown)}")


def image_facts():
    text = read("deploy/container/Dockerfile")
    uid = re.search(r"useradd [^\n]*--uid (\d+)", text)
    user = re.search(r"^USER (\S+)", text, re.M)
    need(uid and user, "Dockerfile: no useradd --uid or no USER")
    return {"text": text, "uid": int(uid.group(1)), "user": user.group(1)}


def builtin_plugins():
    m = re.search(r"^builtins=\(([^)]*)\)", read("scripts/build-plugins"), re.M)
    need(m, "scripts/build-plugins: no builtins=(...) list")
    return {c.replace("-", "_") + ".wasm" for c in m.group(1).split()}


IMAGE_POLICIES = "/usr/share/firedrill/policies/"


def check_policy_copies(files, where):
    """`files`: name -> text. Each is policies/NAME with wasm pointing into the image."""
    originals = {os.path.basename(p): open(p, encoding="utf-8").read() for p in glob.glob(path("policies/*.toml"))}
    need(originals, "policies/*.toml: none")
    need(set(files) == set(originals),
         f"{where}: policy files {sorted(files)} differ from policies/: {sorted(originals)}")
    plugins = builtin_plugins()
    for name, text in files.items():
        policy = tomllib.loads(text)
        wasm = policy.get("wasm", "")
        need(wasm.startswith(IMAGE_POLICIES) and os.path.basename(wasm) in plugins,
             f"{where}: {name}: wasm {wasm!r} is not a built-in plugin under {IMAGE_POLICIES}")
        expected = re.sub(r'^wasm = "([^"/]+)"', rf'wasm = "{IMAGE_POLICIES}\1"', originals[name], flags=re.M)
        need(text.strip() == expected.strip(), f"{where}: {name} differs from policies/{name} (copy it again)")


# --------------------------------------------------------------- Kubernetes

def k8s_validate(docs, where):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version
    versions = ["1.25.0", latest_version()]
    for d in docs:
        kind = d.get("kind")
        if d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            # A CRD: no bundled schema. The fields the operator needs; a
            # PrometheusRule's rules as Prometheus itself would load them.
            if kind == "PrometheusRule":
                need(d["spec"].get("groups"), f"{where}: PrometheusRule without groups")
                promtool_rules(d["spec"], f"{where}: PrometheusRule")
                continue
            need(kind == "ServiceMonitor" and d["spec"]["selector"]["matchLabels"] and
                 all(e.get("port") for e in d["spec"]["endpoints"]), f"{where}: {kind} incomplete")
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                loc = ".".join(str(p) for p in e.path)
                raise Fail(f"{where}: {kind}/{d.get('metadata', {}).get('name')} (k8s {v}): {loc}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                raise Fail(f"{where}: {kind} {d.get('apiVersion')}: no such kind in Kubernetes {v}")


def promtool(*args):
    r = subprocess.run([PROMTOOL, *args], capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip()
    need(r.returncode == 0, out.replace("\n", " | ")[-800:])
    return out


def promtool_rules(doc, where):
    """`promtool check rules` on a rule file's content (a dict with groups)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(doc, f)
    try:
        promtool("check", "rules", f.name)
    except Fail as e:
        raise Fail(f"{where}: {e}")
    finally:
        os.unlink(f.name)


def load_docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def check_agent_pod(docs, where, external_secrets=()):
    """What the agent and its image need of the DaemonSet and its objects."""
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    need(len(by_kind.get("DaemonSet", [])) == 1, f"{where}: expected one DaemonSet")
    ds = by_kind["DaemonSet"][0]
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    need(ds["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(),
         f"{where}: the DaemonSet's selector does not match its pod labels")
    (c,) = [c for c in spec["containers"] if c["name"] == "agent"]
    args = c.get("args", [])
    need(args[:1] == ["agent"] and "--config" in args, f"{where}: args {args}: expected agent --config FILE")
    cfg_file = args[args.index("--config") + 1]
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    cfg_dir, cfg_key = os.path.split(cfg_file)
    need(cfg_dir in mounts, f"{where}: nothing is mounted at {cfg_dir} (the --config file's directory)")
    vol = volumes[mounts[cfg_dir]["name"]]
    src = vol.get("configMap", {}).get("name") or vol.get("secret", {}).get("secretName")
    holders = [d for d in docs if d["kind"] in ("ConfigMap", "Secret") and d["metadata"]["name"] == src]
    need(holders, f"{where}: the config volume names {src!r}, which is not among the objects")
    h = holders[0]
    text = (h.get("data") or {}).get(cfg_key) or (h.get("stringData") or {}).get(cfg_key)
    need(text, f"{where}: {src} has no key {cfg_key}")
    cfg = validate_config(text, f"{where}: {src}/{cfg_key}")
    port = listen_port(cfg, f"{where}: {src}/{cfg_key}")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    need(ports.get("http") == port, f"{where}: containerPort 'http' {ports.get('http')} != agent.listen port {port}")
    policies = cfg.get("agent", {}).get("policies")
    need(policies in mounts, f"{where}: agent.policies {policies} is not a mounted directory")
    pvol = volumes[mounts[policies]["name"]]
    need("configMap" in pvol, f"{where}: the policies directory is not a ConfigMap volume")
    for probe, route in (("livenessProbe", "/health"), ("readinessProbe", "/ready"), ("startupProbe", "/health")):
        p = c.get(probe)
        need(p and p["httpGet"]["path"] == route and p["httpGet"]["port"] in ("http", port),
             f"{where}: {probe} should GET {route} on the agent's port")
    sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
    need(psc.get("runAsNonRoot") or sc.get("runAsNonRoot"), f"{where}: runAsNonRoot is not set")
    need(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem is not true")
    need(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation is not false")
    need("ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: capabilities are not all dropped")
    uid = image_facts()["uid"]
    need((sc.get("runAsUser") or psc.get("runAsUser")) == uid,
         f"{where}: runAsUser should be the image's user {uid} (initdb needs a passwd entry)")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    cache = env.get("FIREDRILL_CACHE_DIR") or re.search(r"FIREDRILL_CACHE_DIR=(\S+)", image_facts()["text"]).group(1)
    for needed in ("/tmp", os.path.dirname(cache)):
        m = mounts.get(needed)
        need(m and "emptyDir" in volumes[m["name"]], f"{where}: {needed} must be a writable emptyDir (read-only root)")
    res = c.get("resources", {})
    need(res.get("requests") and res.get("limits", {}).get("memory"), f"{where}: resources requests/limits missing")
    secret_names = {d["metadata"]["name"] for d in by_kind.get("Secret", [])}
    for ef in c.get("envFrom", []):
        ref = ef.get("secretRef", {}).get("name")
        if ref and ref not in external_secrets and not ef["secretRef"].get("optional"):
            need(ref in secret_names, f"{where}: envFrom names Secret {ref!r}, not among the objects")
    need_known_env(env, f"{where}: DaemonSet env")
    for s in by_kind.get("Secret", []):
        if s["metadata"]["name"] != src:
            need_known_env(list((s.get("stringData") or {})) + list((s.get("data") or {})), f"{where}: Secret env")
    for svc in by_kind.get("Service", []):
        need(svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(),
             f"{where}: Service {svc['metadata']['name']} selects no agent pod")
        need(all(p.get("targetPort") in ("http", port) for p in svc["spec"]["ports"]),
             f"{where}: Service targetPort is not the agent's port")
    sa = spec.get("serviceAccountName")
    if by_kind.get("ServiceAccount"):
        need(sa in {d["metadata"]["name"] for d in by_kind["ServiceAccount"]}, f"{where}: serviceAccountName {sa} missing")
    return by_kind


def k8s_dir_docs():
    kdir = os.path.join(DEPLOY, "k8s")
    kust = yaml.safe_load(open(os.path.join(kdir, "kustomization.yaml")))
    files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(kdir, "*.yaml")))
    files.remove("kustomization.yaml")
    need(sorted(kust["resources"]) == files,
         f"kustomization.yaml resources {sorted(kust['resources'])} != the manifests {files}")
    docs = []
    for f in kust["resources"]:
        for d in load_docs(open(os.path.join(kdir, f)).read()):
            if kust.get("namespace") and d["kind"] != "Namespace":
                d.setdefault("metadata", {})["namespace"] = kust["namespace"]
            docs.append((f, d))
    return docs


@check("k8s: manifests valid (kubernetes-validate --strict, 1.25 and latest)")
def _():
    for f, d in k8s_dir_docs():
        k8s_validate([d], f"deploy/k8s/{f}")


@check("k8s: DaemonSet fits the agent (config, listen port, probes, policies, non-root, read-only root)")
def _():
    check_agent_pod([d for _, d in k8s_dir_docs()], "deploy/k8s")


@check("k8s: policies ConfigMap = policies/*.toml, plugins from the image")
def _():
    (cm,) = [d for f, d in k8s_dir_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "firedrill-policies"]
    check_policy_copies(cm.get("data", {}), "deploy/k8s/configmap-policies.yaml")


# --------------------------------------------------------------------- Helm

CHART = os.path.join(DEPLOY, "helm", "firedrill")
FULL_VALUES = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "existingSecret": "my-firedrill-env",
    "configInSecret": True,
    "env": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317"},
    "policies": {"files": {"verifier-freshness.toml": 'world = "verifier"\nwasm = "verifier_freshness.wasm"\n'},
                 "binaryFiles": {"verifier_freshness.wasm": "AGFzbQ0AAQA="}},
    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
    "tolerations": [{"operator": "Exists"}],
    "priorityClassName": "system-node-critical",
}


def helm_render(values):
    import helm_python as helm
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="firedrill", namespace="firedrill")
    docs = []
    for name, text in sorted(out.items()):
        if name.endswith(".yaml"):
            docs += load_docs(text)
    return docs


@check("helm: lint (Helm SDK via helm-python-sdk)")
def _():
    import helm_python as helm
    r = helm.lint(CHART)
    bad = [m for m in r.get("messages", []) if m.get("severity", 0) >= 2] + [{"error": e} for e in r.get("errors") or []]
    need(not bad, "; ".join(f"{m.get('path', '')}: {m['error']}" for m in bad))


@check("helm: renders with default values; valid and fits the agent")
def _():
    docs = helm_render({})
    k8s_validate(docs, "helm (default values)")
    check_agent_pod(docs, "helm (default values)")


@check("helm: renders with every option on; valid and fits the agent")
def _():
    docs = helm_render(copy.deepcopy(FULL_VALUES))
    k8s_validate(docs, "helm (all options)")
    kinds = check_agent_pod(docs, "helm (all options)", external_secrets=[FULL_VALUES["existingSecret"]])
    need("ServiceMonitor" in {d["kind"] for d in docs}, "serviceMonitor.enabled rendered no ServiceMonitor")
    need("PrometheusRule" in {d["kind"] for d in docs}, "prometheusRule.enabled rendered no PrometheusRule")
    (cm,) = [d for d in kinds["ConfigMap"] if d["metadata"]["name"].endswith("-policies")]
    need("verifier_freshness.wasm" in cm.get("binaryData", {}), "policies.binaryFiles did not reach binaryData")


@check("helm: values.schema.json refuses a misspelt value")
def _():
    for key in ("serviceMonitor", "prometheusRule"):
        try:
            helm_render({key: {"enable": True}})
        except Exception as e:
            need("enable" in str(e), f"refused, but not for the misspelling: {e}")
            continue
        raise Fail(f"{key}.enable (for enabled) was accepted")


@check("helm: files/policies = policies/*.toml, plugins from the image")
def _():
    files = {os.path.basename(p): open(p).read() for p in glob.glob(os.path.join(CHART, "files/policies/*.toml"))}
    check_policy_copies(files, "deploy/helm/firedrill/files/policies")


# -------------------------------------------------------- systemd, container

@check("systemd: hardening, ExecStart flags exist, environment names known")
def _():
    unit = read("deploy/systemd/firedrill.service")
    lines = [l.strip() for l in unit.splitlines() if l.strip() and not l.strip().startswith("#")]
    keys = {}
    for l in lines:
        if "=" in l:
            k, v = l.split("=", 1)
            keys.setdefault(k, []).append(v)
    want = {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter": "@system-service", "Restart": "on-failure",
    }
    for k, v in want.items():
        need(keys.get(k) == [v], f"{k}={v} expected, found {keys.get(k)}")
    need("MemoryDenyWriteExecute" not in keys, "MemoryDenyWriteExecute is set: wasmtime's JIT needs W^X toggling")
    for k in ("StateDirectory", "ConfigurationDirectory", "EnvironmentFile"):
        need(k in keys, f"{k}= missing")
    need("DynamicUser" in keys or "User" in keys, "neither DynamicUser= nor User=")
    (start,) = keys["ExecStart"]
    argv = shlex.split(start)
    need(argv[:2] == ["/usr/local/bin/firedrill", "agent"], f"ExecStart {start}")
    need(re.search(r"^\s*Agent\(cli::agent::Args\)", read("host/src/main.rs"), re.M), "main.rs: no `agent` subcommand")
    flags = re.findall(r"#\[arg\(long[^\]]*\]\s*(\w+):", read("host/src/cli/agent.rs"))
    for a in argv[2:]:
        if a.startswith("--"):
            need(a[2:].replace("-", "_") in flags, f"ExecStart flag {a}: `firedrill agent` has only {flags}")
    env = [v.split("=", 1)[0] for v in keys.get("Environment", [])]
    example = re.findall(r"^#?([A-Z][A-Z0-9_]+)=", read("deploy/systemd/firedrill.env.example"), re.M)
    need_known_env(env + example, "firedrill.service / firedrill.env.example")


def dockerignore_excludes(rel):
    """Whether Dockerfile.dockerignore keeps `rel` out of the build context (last match wins)."""
    excluded = False
    for line in read("deploy/container/Dockerfile.dockerignore").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes):
            excluded = not neg
    return excluded


@check("container: image config, user, ports, COPY sources and .dockerignore agree")
def _():
    img = image_facts()
    text = img["text"]
    need(img["user"].split(":")[0] in (str(img["uid"]), "firedrill") and img["uid"] != 0, "USER is root")
    need(len(re.findall(r"^FROM ", text, re.M)) >= 2, "not a multi-stage build")
    need("cargo build --release --locked -p firedrill" in text and "scripts/build-plugins" in text,
         "the build stage does not build the host binary and the plugins")
    need(os.access(path("scripts/build-plugins"), os.X_OK), "scripts/build-plugins is not executable")
    for src in re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+) \S+$", text, re.M):
        if src == ".":
            continue
        need(os.path.exists(path(src)), f"COPY {src}: no such file")
        need(not dockerignore_excludes(src), f"COPY {src}: excluded by Dockerfile.dockerignore")
    need(not dockerignore_excludes("Cargo.lock") and not dockerignore_excludes("host/src/main.rs"),
         "Dockerfile.dockerignore excludes the sources")
    cfg_path = re.search(r"FIREDRILL_CONFIG=(\S+)", text).group(1)
    need(re.search(rf"^COPY deploy/container/firedrill.toml {re.escape(cfg_path)}$", text, re.M),
         f"FIREDRILL_CONFIG={cfg_path} is not the config the image copies")
    cfg = validate_config(read("deploy/container/firedrill.toml"), "deploy/container/firedrill.toml", partial=True)
    port = listen_port(cfg, "deploy/container/firedrill.toml")
    need(re.search(rf"^EXPOSE {port}$", text, re.M), f"EXPOSE {port} missing")
    need(re.search(rf"HEALTHCHECK [^\n]*\\\n[^\n]*127\.0\.0\.1:{port}/health", text), f"HEALTHCHECK on :{port}/health missing")
    policies = cfg["agent"]["policies"].rstrip("/") + "/"
    need(policies == IMAGE_POLICIES and re.search(rf"^COPY --from=build \S+ {re.escape(IMAGE_POLICIES)}$", text, re.M),
         f"agent.policies {policies} is not where the image puts the built-in policies ({IMAGE_POLICIES})")
    need(re.search(r'ENTRYPOINT \[[^\]]*"/usr/local/bin/firedrill"\]', text) and
         "COPY --from=build /out/firedrill /usr/local/bin/firedrill" in text, "ENTRYPOINT is not the copied binary")
    need_known_env(re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]+)=\S+ *\\?$", text.split("FROM debian")[-1], re.M),
                   "Dockerfile ENV")


# ------------------------------------------------------------------ compose

@check("compose: services, mounts, build, agent config, scrape and OTLP targets agree")
def _():
    cdir = os.path.join(DEPLOY, "compose")
    comp = yaml.safe_load(open(os.path.join(cdir, "compose.yaml")))
    services = comp["services"]
    for name, s in services.items():
        deps = s.get("depends_on", {})
        for d in deps:
            need(d in services, f"{name} depends on {d}, which is no service")
        for v in s.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source")
            if src.startswith((".", "/")):
                need(os.path.exists(os.path.normpath(os.path.join(cdir, src))), f"{name}: bind mount {src} does not exist")
            else:
                need(src in (comp.get("volumes") or {}), f"{name}: volume {src} is not declared")
    fd = services["firedrill"]
    ctx = os.path.normpath(os.path.join(cdir, fd["build"]["context"]))
    need(os.path.samefile(ctx, ROOT), "firedrill: build context is not the repository root")
    need(os.path.exists(os.path.join(ctx, fd["build"]["dockerfile"])), "firedrill: no such Dockerfile")
    args = fd["command"]
    cfg_in = args[args.index("--config") + 1]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in fd["volumes"] if v.startswith(".")}
    need(cfg_in in mounted, f"firedrill: --config {cfg_in} is not mounted")
    cfg = validate_config(open(os.path.join(cdir, mounted[cfg_in])).read(), "deploy/compose/firedrill.toml")
    port = listen_port(cfg, "deploy/compose/firedrill.toml")
    need_known_env(fd.get("environment", {}), "compose firedrill environment")
    # The store, Redis and Postgres the agent is pointed at are services here.
    hosts = {re.sub(r"^\w+://(?:[^@/]*@)?([^:/]+).*$", r"\1", u) for s in cfg["source"] for u in s["urls"]}
    hosts.add(re.sub(r"^https?://([^:/]+).*$", r"\1", cfg["store"]["s3_endpoint"]))
    for var in ("FIREDRILL_REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        hosts.add(re.sub(r"^\w+://(?:[^@/]*@)?([^:/]+).*$", r"\1", fd["environment"][var]))
    need(hosts <= set(services), f"the agent is pointed at hosts that are no service: {sorted(hosts - set(services))}")
    prom = yaml.safe_load(open(os.path.join(cdir, "prometheus/prometheus.yml")))
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "firedrill"]
    need(job.get("metrics_path", "/metrics") == "/metrics", "Prometheus scrapes another path than /metrics")
    need(f"firedrill:{port}" in job["static_configs"][0]["targets"], f"Prometheus does not scrape firedrill:{port}")
    otel = yaml.safe_load(open(os.path.join(cdir, "otel/config.yaml")))
    for pname, p in otel["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for comp_name in p.get(kind, []):
                need(comp_name in (otel.get(kind) or {}), f"otel: pipeline {pname} uses undefined {kind[:-1]} {comp_name}")
    for e in otel["service"].get("extensions", []):
        need(e in (otel.get("extensions") or {}), f"otel: undefined extension {e}")
    endpoint = fd["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].rsplit(":", 1)[1]
    grpc = otel["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]
    need(endpoint == grpc, f"the agent sends OTLP to port {endpoint}, the collector listens on {grpc}")
    graf = services["grafana"]
    dash_mount = [v.split(":")[1] for v in graf["volumes"] if "dashboards" in v.split(":")[0]][0]
    prov = yaml.safe_load(open(os.path.join(cdir, "grafana/provisioning/dashboards/firedrill.yaml")))
    need(prov["providers"][0]["options"]["path"] == dash_mount, "Grafana's dashboard provider path is not the mounted folder")
    ds = yaml.safe_load(open(os.path.join(cdir, "grafana/provisioning/datasources/prometheus.yaml")))
    need(ds["datasources"][0]["url"].split("//")[1].split(":")[0] in services, "Grafana's datasource is no service")


# ------------------------------------------------------------ alert rules

RULES = os.path.join(CHART, "files", "prometheus", "firedrill.rules.yml")
RULE_TESTS = os.path.join(CHART, "files", "prometheus", "firedrill.rules.test.yml")
# The matcher of the agents' targets in `up`: the compose job's name; the chart
# puts prometheusRule.agentSelector in its place.
AGENT_MATCHER = 'job="firedrill"'


@check("prometheus: promtool check config (compose), with the files compose.yaml mounts into it")
def _():
    # /etc/prometheus laid out as the container sees it: the rule files the
    # configuration names must be the ones compose mounts.
    cdir = os.path.join(DEPLOY, "compose")
    prom = yaml.safe_load(open(os.path.join(cdir, "compose.yaml")))["services"]["prometheus"]
    conf = next((a.split("=", 1)[1] for a in prom.get("command", []) if a.startswith("--config.file=")),
                "/etc/prometheus/prometheus.yml")
    mounted = {}
    with tempfile.TemporaryDirectory() as root:
        for v in prom.get("volumes", []):
            src, dst = v.split(":")[:2]
            if not src.startswith((".", "/")):
                continue  # a named volume
            src = os.path.normpath(os.path.join(cdir, src))
            mounted[dst] = src
            inside = os.path.join(root, dst.lstrip("/"))
            os.makedirs(os.path.dirname(inside), exist_ok=True)
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, inside)
        need(conf in mounted, f"--config.file={conf} is not mounted")
        out = promtool("check", "config", os.path.join(root, conf.lstrip("/")))
    rules = [dst for dst, src in mounted.items() if os.path.samefile(src, RULES)]
    need(rules, f"compose does not mount {os.path.relpath(RULES, ROOT)} into Prometheus")
    need(re.search(rf"{re.escape(os.path.basename(rules[0]))}\s*\n\s*SUCCESS: \d+ rules found", out),
         f"promtool check config did not load the alert rules (rule_files): {out}")


# The rules themselves.

def alert_rules():
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    return doc, [r for g in doc["groups"] for r in g["rules"]]


@check("alerts: promtool check rules firedrill.rules.yml; labels and annotations")
def _():
    promtool("check", "rules", RULES)
    _, rules = alert_rules()
    names = [r.get("alert") for r in rules]
    need(all(names) and len(set(names)) == len(names), f"every rule an alert, each name once: {names}")
    for r in rules:
        need(r.get("labels", {}).get("severity") in ("critical", "warning"), f"{r['alert']}: severity critical or warning")
        need(r.get("for"), f"{r['alert']}: no `for:` (one missed scrape would page)")
        a = r.get("annotations", {})
        need(a.get("summary") and a.get("description"), f"{r['alert']}: summary and description wanted")
    agent = [r["alert"] for r in rules if AGENT_MATCHER in r["expr"]]
    need(len(agent) >= 2 and all(re.search(r"\bup\{" + re.escape(AGENT_MATCHER) + r"\}", r["expr"])
                                 for r in rules if AGENT_MATCHER in r["expr"]),
         f"the agent-down rules select up{{{AGENT_MATCHER}}} (the chart replaces exactly that): {agent}")
    need(open(RULES).read().count(AGENT_MATCHER) == sum(r["expr"].count(AGENT_MATCHER) for r in rules),
         f"{AGENT_MATCHER} appears outside the agent-down expressions: the chart would replace it there too")


@check("alerts: promtool test rules: each rule fires, and stays quiet or resolves")
def _():
    promtool("test", "rules", RULE_TESTS)
    with open(RULE_TESTS) as f:
        tests = yaml.safe_load(f)
    need(os.path.normpath(os.path.join(os.path.dirname(RULE_TESTS), tests["rule_files"][0])) == RULES,
         "the tests load another rule file")
    fires, quiet = set(), set()
    for t in tests["tests"]:
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
    _, rules = alert_rules()
    for r in rules:
        need(r["alert"] in fires, f"no test where {r['alert']} fires")
        need(r["alert"] in quiet, f"no test where {r['alert']} stays quiet or resolves")


@check("alerts: every firedrill_* metric of the rules and their tests exists in the agent (metrics.rs)")
def _():
    names = metric_names()
    _, rules = alert_rules()
    with open(RULE_TESTS) as f:
        tests = yaml.safe_load(f)
    used = {m: f"rule {r['alert']}" for r in rules for m in re.findall(r"\bfiredrill_[A-Za-z0-9_:]+", r["expr"])}
    for t in tests["tests"]:
        for s in t.get("input_series", []):
            for m in re.findall(r"^firedrill_[A-Za-z0-9_:]+", s["series"]):
                used.setdefault(m, f"test {t['name']!r}")
    need(used, "the rules query no firedrill_* metric")
    unknown = sorted(f"{m} ({w})" for m, w in used.items() if names.get(m, "histogram") == "histogram")
    need(not unknown, "unknown metrics (or a histogram's family name): " + "; ".join(unknown))


@check("helm: prometheusRule.enabled renders files/prometheus/firedrill.rules.yml as a PrometheusRule")
def _():
    need(not [d for d in helm_render({}) if d["kind"] == "PrometheusRule"], "a PrometheusRule by default")
    canonical = open(RULES).read()
    for values, matcher in (
        ({"enabled": True, "labels": {"release": "prometheus"}}, 'job="firedrill",namespace="firedrill"'),
        ({"enabled": True, "agentSelector": 'job="kubernetes-pods",namespace="backup"'},
         'job="kubernetes-pods",namespace="backup"'),
    ):
        (rule,) = [d for d in helm_render({"prometheusRule": values}) if d["kind"] == "PrometheusRule"]
        for k, v in values.get("labels", {}).items():
            need(rule["metadata"]["labels"].get(k) == v, f"prometheusRule.labels {k}={v} not on the PrometheusRule")
        want = yaml.safe_load(canonical.replace(AGENT_MATCHER, matcher))
        need(rule["spec"] == want, f"with {values}: the PrometheusRule's spec is not the rules file "
                                   f"with up{{{matcher}}}")
    # The default matcher is the ServiceMonitor's job: the Service's name.
    docs = helm_render({"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True},
                        "fullnameOverride": "backups"})
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    need(f'up{{job="{svc["metadata"]["name"]}"' in json.dumps(rule["spec"]).replace('\\"', '"'),
         "the agent-down rules do not select the ServiceMonitor's job (the Service's name)")


# ---------------------------------------------------------------- dashboard

DASHBOARD = os.path.join(DEPLOY, "compose", "grafana", "dashboards", "firedrill.json")


def dashboard_queries(dash):
    out = []

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "definition") and isinstance(v, str):
                    out.append((where, v))
                elif k == "query" and isinstance(v, str) and "firedrill_" in v:
                    out.append((where, v))
                else:
                    walk(v, node.get("title") or node.get("name") or where)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)
    walk(dash, "dashboard")
    return out


@check("metrics: the name parser derives what the tests assert on /metrics")
def _():
    names = metric_names()
    asserted = set(re.findall(r"(firedrill_\w+)\{", read("tests/all/telemetry.rs")))
    src = read("host/src/telemetry/metrics.rs")
    asserted |= set(re.findall(r'prometheus_name\(\),\s*"(firedrill_\w+)"', src))
    asserted |= set(re.findall(r'(firedrill_\w+)\{', src))
    need(len(asserted) >= 5, f"found only {sorted(asserted)} asserted in the tests")
    missing = sorted(asserted - set(names))
    need(not missing, f"derived names lack {missing}: the parser no longer matches metrics.rs")


@check("dashboard: valid JSON, panels, data source and variables")
def _():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    need(dash.get("uid") and dash.get("title") and dash.get("panels"), "no uid, title or panels")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    ids, cells = set(), set()
    for p in dash["panels"]:
        need(p["id"] not in ids, f"panel id {p['id']} twice")
        ids.add(p["id"])
        g = p["gridPos"]
        need(g["x"] + g["w"] <= 24, f"panel {p['title']!r} is wider than the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                need((x, y) not in cells, f"panel {p['title']!r} overlaps another")
                cells.add((x, y))
        if p["type"] == "row":
            continue
        targets = p.get("targets", [])
        need(targets, f"panel {p['title']!r} has no query")
        need(len({t["refId"] for t in targets}) == len(targets), f"panel {p['title']!r}: refIds repeat")
        for t in targets + [p]:
            uid = t.get("datasource", {}).get("uid", "")
            need(uid == "${datasource}", f"panel {p['title']!r}: data source {uid!r}, not the $datasource variable")
    used = set()
    for _, q in dashboard_queries(dash):
        used |= set(re.findall(r"\$(?:\{)?(\w+)", q))
    used -= {"__rate_interval", "__interval", "__range"}
    need(used <= variables, f"queries use undefined variables {sorted(used - variables)}")


@check("dashboard: every firedrill_* metric exists in the agent (metrics.rs)")
def _():
    names = metric_names()
    with open(DASHBOARD) as f:
        dash = json.load(f)
    unknown = {}
    used = set()
    for where, q in dashboard_queries(dash):
        for m in re.findall(r"\bfiredrill_[A-Za-z0-9_:]+", q):
            used.add(m)
            if m not in names:
                unknown.setdefault(m, where)
            elif names[m] == "histogram":
                unknown.setdefault(m, f"{where}; a histogram: query {m}_bucket, _sum or _count")
    need(used, "the dashboard queries no firedrill_* metric")
    need(not unknown, "unknown metrics: " + "; ".join(f"{m} (panel {w!r})" for m, w in sorted(unknown.items())))
    wanted = {"firedrill_backup_duration_seconds_bucket", "firedrill_backup_size_bytes",
              "firedrill_backup_last_success_seconds", "firedrill_drills_total", "firedrill_drill_rto_seconds",
              "firedrill_drill_rpo_seconds", "firedrill_plugin_calls_total", "firedrill_plugin_errors_total",
              "firedrill_plugin_duration_seconds_bucket", "firedrill_policy_reloads_total",
              "firedrill_lock_wait_seconds_bucket"}
    need(wanted <= used, f"no panel shows {sorted(wanted - used)}")


@check("dashboard: every query is valid PromQL (promtool check rules)")
def _():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    subst = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1d", "$window": "6h", "$source": ".*",
             "${datasource}": ""}
    rules = []
    for i, (where, q) in enumerate(dashboard_queries(dash)):
        if q.startswith("label_values("):
            m = re.match(r"label_values\((\w+)\s*,\s*\w+\)$", q)
            need(m, f"{where}: {q}: not label_values(metric, label)")
            q = m.group(1)
        for k, v in subst.items():
            q = q.replace(k, v)
        rules.append({"record": f"firedrill:dashboard_query_{i}", "expr": q})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    try:
        r = subprocess.run([PROMTOOL, "check", "rules", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    need(r.returncode == 0, (r.stdout + r.stderr).strip().replace("\n", " | ")[-600:])


sys.exit(1 if failures else 0)
