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
- a dashboard JSON dropped into dashboards/ renders as a Grafana sidecar ConfigMap.

    charts/validate.py CHART_DIR [--json]

Prints one line per check and, with --json, a last line of JSON: for each value set the
kinds and container images rendered. Exits 1 on the first failure, saying which.
"""

import glob
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
            print(
                f"ok   {name}: lint --strict ({infos} info), schema, {len(docs)} manifests "
                f"valid (kubernetes-validate --strict): {', '.join(result[name]['kinds'])}"
            )
        must_refuse(chart, "a misspelt key (coordinator.replica)", {"coordinator": {"replica": 2}})
        must_refuse(chart, "a port as a string", {"agent": {"grpcPort": "8481"}})
        must_refuse(chart, "a CIDR without a prefix", {"networkPolicy": {"agentCIDRs": ["10.0.0.1"]}})
        must_refuse(chart, "two coordinators on the embedded store", {"coordinator": {"replicas": 2}}, render_too=True)
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
