#!/usr/bin/env python3
"""Lints, renders and validates a Helm chart without the helm binary (which cannot be
installed here), with PyPI's helm-python-sdk (Helm's own Go SDK behind a C ABI) and
kubernetes-validate:

- `helm lint --strict` on the chart, with its default values and with every
  `ci/*-values.yaml` (warnings count as failures);
- for each of those value sets: values.schema.json validation, an offline render (as an
  install into namespace `napalm-ci`), and `kubernetes-validate --strict` on every rendered
  manifest (unknown fields are errors);
- the schema and the templates refuse what they must: a misspelt key, a wrong type, two
  coordinators on the embedded store;
- a dashboard JSON dropped into dashboards/ renders as a Grafana sidecar ConfigMap;
- the cluster PKI as rendered: the CA Secret holds a P-256 CA, the bootstrap join token
  pins that CA's SHA-256 and names the coordinator's TLS Service, the coordinator imports
  both, and the agents mount nothing but the token and run no plain listener.

    charts/validate.py CHART_DIR [--json] [--dump-trust DIR]

--dump-trust writes the default render's ca.crt, ca.key, join-token and the coordinator's
and the agent's container args (coordinator-args.json, agent-args.json) to DIR, for a test
that runs the real daemons on them.

Prints one line per check and, with --json, a last line of JSON: for each value set the
kinds and container images rendered. Exits 1 on the first failure, saying which.
"""

import base64
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import helm_python
import kubernetes_validate  # noqa: F401  (fails early when the package is missing)

NAMESPACE = "napalm-ci"
RELEASE = "napalm"


class Failure(Exception):
    pass


def value_sets(chart_dir):
    """(name, values) for the defaults and each ci/*-values.yaml."""
    sets = [("default", {})]
    for path in sorted(glob.glob(os.path.join(chart_dir, "ci", "*-values.yaml"))):
        with open(path, encoding="utf-8") as f:
            sets.append((os.path.relpath(path, chart_dir), helm_python.values_from_yaml(f.read())))
    return sets


def lint(chart_dir, name, values):
    report = helm_python.lint(chart_dir, values or None, strict=True, namespace=NAMESPACE)
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if report.get("errors") or bad:
        raise Failure(f"helm lint --strict ({name}): {report.get('errors')} {bad}")
    return len(report.get("messages", []))


def documents(manifests):
    """(template path, manifest text) of every rendered manifest, NOTES.txt left out."""
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in text.split("\n---"):
            if doc.strip() and any(l.strip() and not l.lstrip().startswith("#") for l in doc.splitlines()):
                out.append((path, doc))
    return out


def kube_validate(docs, workdir, name):
    files = []
    for i, (path, doc) in enumerate(docs):
        f = os.path.join(workdir, f"{i:02d}-{os.path.basename(path)}")
        with open(f, "w", encoding="utf-8") as out:
            out.write(doc + "\n")
        files.append(f)
    r = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--no-warn", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise Failure(f"kubernetes-validate --strict ({name}):\n{r.stdout}{r.stderr}")
    return files


def summary(docs):
    import yaml  # kubernetes-validate's own dependency

    kinds, images = [], []
    for _, doc in docs:
        obj = yaml.safe_load(doc)
        kinds.append(f"{obj['kind']}/{obj['metadata']['name']}")
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            images.append(c["image"])
    return {"kinds": kinds, "images": sorted(set(images))}


def render(chart, values):
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def must_refuse(chart, what, values, render_too=False):
    """The schema (or, with render_too, a template's `fail`) refuses `values`."""
    try:
        chart.validate_schema(values)
        if render_too:
            render(chart, values)
    except helm_python.HelmError as e:
        print(f"ok   refuses {what}: {' '.join(str(e).split())[:200]}")
        return
    raise Failure(f"the chart accepted {what}: {values}")


def objects(docs):
    import yaml  # kubernetes-validate's own dependency

    return [yaml.safe_load(doc) for _, doc in docs]


def find(objs, kind, suffix):
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"].endswith(suffix):
            return o
    return None


def container(obj):
    return obj["spec"]["template"]["spec"]["containers"][0]


def decode_token(text):
    prefix = "napalm-join-v1."
    if not text.startswith(prefix):
        raise Failure(f"the join token does not start with {prefix}: {text[:40]!r}")
    body = text[len(prefix):]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def check_trust(name, objs, values):
    """The PKI as rendered for one value set (see the module's docstring)."""
    coord = find(objs, "StatefulSet", "-coordinator")
    agent = find(objs, "DaemonSet", "-agent")
    pki = coord is not None and not values.get("coordinator", {}).get("insecurePlain", False)
    out = {}
    if pki:
        ca_secret = find(objs, "Secret", "-ca")
        join_secret = find(objs, "Secret", "-join")
        if ca_secret is None or join_secret is None:
            raise Failure(f"{name}: the PKI's CA or join Secret is missing")
        crt = base64.b64decode(ca_secret["data"]["tls.crt"]).decode()
        key = base64.b64decode(ca_secret["data"]["tls.key"]).decode()
        token = base64.b64decode(join_secret["data"]["join-token"]).decode()
        text = subprocess.run(
            ["openssl", "x509", "-noout", "-text"], input=crt, capture_output=True, text=True, check=True
        ).stdout
        if "CA:TRUE" not in text or "prime256v1" not in text:
            raise Failure(f"{name}: the chart's CA is not a P-256 CA certificate:\n{text}")
        der = base64.b64decode("".join(l for l in crt.splitlines() if not l.startswith("-----")))
        body = decode_token(token)
        if body["f"] != hashlib.sha256(der).hexdigest():
            raise Failure(f"{name}: the join token pins {body['f']}, the CA is {hashlib.sha256(der).hexdigest()}")
        svc = find(objs, "Service", "-coordinator")
        port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "tls")
        want = f"{svc['metadata']['name']}.{NAMESPACE}.svc:{port}"
        if body["a"] != [want]:
            raise Failure(f"{name}: the join token names {body['a']}, the TLS Service is {want}")
        args = container(coord)["args"]
        for flag in ["--trust-listen=", "--https-listen=", "--trust-ca-cert=", "--trust-ca-key=",
                     "--trust-bootstrap-token-file=", f"--trust-advertise={want}"]:
            if not any(a.startswith(flag) for a in args):
                raise Failure(f"{name}: the coordinator lacks {flag}: {args}")
        env = [e["name"] for e in container(coord).get("env", [])]
        if "NAPALM_INSECURE_PLAIN" in env:
            raise Failure(f"{name}: the coordinator runs plain with the PKI on")
        out = {"ca.crt": crt, "ca.key": key, "join-token": token, "coordinator-args.json": json.dumps(args)}
        print(f"ok   {name}: the CA is P-256, the join token pins it ({body['f'][:16]}…) and names {want}")
    if agent is not None and not values.get("agent", {}).get("insecurePlain", False) \
            and not values.get("agent", {}).get("tls", {}).get("secretName"):
        c = container(agent)
        args = c["args"]
        if "--join-file=/etc/napalm/join/join-token" not in args or any("token-file" in a for a in args):
            raise Failure(f"{name}: the agent does not enroll with the join token alone: {args}")
        secrets = [v["secret"]["secretName"] for v in agent["spec"]["template"]["spec"]["volumes"] if "secret" in v]
        want_join = values.get("trust", {}).get("existingJoinTokenSecret") or f"{RELEASE}-join"
        if secrets != [want_join]:
            raise Failure(f"{name}: agents mount the Secrets {secrets}; only {want_join} (the join token) is theirs")
        if any(e["name"] in ("NAPALM_INSECURE_PLAIN", "NAPALM_COORDINATOR") for e in c.get("env", [])):
            raise Failure(f"{name}: the enrolling agent has a plain or token setting: {c.get('env')}")
        out["agent-args.json"] = json.dumps(args)
        print(f"ok   {name}: agents enroll with {want_join} and mount no other Secret")
    return out


def check_dashboard(chart_dir, workdir):
    """A dashboards/*.json file becomes a labelled ConfigMap that validates."""
    copy = os.path.join(workdir, "chart")
    shutil.copytree(chart_dir, copy)
    os.makedirs(os.path.join(copy, "dashboards"), exist_ok=True)
    board = {"title": "Napalm check", "panels": [], "schemaVersion": 39}
    with open(os.path.join(copy, "dashboards", "zz-validate-check.json"), "w", encoding="utf-8") as f:
        json.dump(board, f)
    docs = documents(render(helm_python.Chart.load(copy), {}))
    maps = [d for p, d in docs if p.endswith("dashboards-configmap.yaml") and "zz-validate-check.json" in d]
    if not maps or "grafana_dashboard" not in maps[0]:
        raise Failure("a dashboards/*.json file did not render as a labelled ConfigMap")
    kube_validate([("dashboard.yaml", maps[0])], workdir, "dashboard ConfigMap")
    print("ok   dashboards/*.json renders as a Grafana sidecar ConfigMap that validates")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    chart_dir = os.path.abspath(argv[1])
    want_json = "--json" in argv[2:]
    dump_dir = None
    if "--dump-trust" in argv[2:]:
        i = argv.index("--dump-trust")
        if i + 1 >= len(argv):
            print("--dump-trust needs a directory", file=sys.stderr)
            return 2
        dump_dir = argv[i + 1]
    chart = helm_python.Chart.load(chart_dir)
    print(f"chart {chart.name} {chart.version} (helm SDK {helm_python.helm_sdk_version()})")
    result = {}
    try:
        for name, values in value_sets(chart_dir):
            infos = lint(chart_dir, name, values)
            chart.validate_schema(values)
            docs = documents(render(chart, values))
            with tempfile.TemporaryDirectory() as work:
                kube_validate(docs, work, name)
            result[name] = summary(docs)
            trust = check_trust(name, objects(docs), values)
            if name == "default" and dump_dir:
                os.makedirs(dump_dir, exist_ok=True)
                for f, text in trust.items():
                    with open(os.path.join(dump_dir, f), "w", encoding="utf-8") as out:
                        out.write(text)
            print(
                f"ok   {name}: lint --strict ({infos} info), schema, {len(docs)} manifests "
                f"valid (kubernetes-validate --strict): {', '.join(result[name]['kinds'])}"
            )
        must_refuse(chart, "a misspelt key (coordinator.replica)", {"coordinator": {"replica": 2}})
        must_refuse(chart, "a port as a string", {"agent": {"grpcPort": "8481"}})
        must_refuse(chart, "a CIDR without a prefix", {"networkPolicy": {"agentCIDRs": ["10.0.0.1"]}})
        must_refuse(chart, "two coordinators on the embedded store", {"coordinator": {"replicas": 2}}, render_too=True)
        must_refuse(
            chart,
            "enrolling agents beside a plain coordinator",
            {"coordinator": {"insecurePlain": True}},
            render_too=True,
        )
        with tempfile.TemporaryDirectory() as work:
            check_dashboard(chart_dir, work)
    except (Failure, helm_python.HelmError) as e:
        print(f"FAIL {e}")
        return 1
    if want_json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
