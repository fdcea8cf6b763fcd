"""manifests/monitoring/ proven on Debian's Prometheus: the rules pass `promtool check rules`; `promtool test rules`
fires every alert on the series that should fire it and keeps it silent on healthy ones; the PrometheusRule holds
exactly the same groups; and a real `prometheus` scraping two running kekds (Vault backend on fake_vault.py, so the
backend, cache and token series exist too) returns data for every recording rule and every dashboard query through
/api/v1/query, evaluates every rule without error, and puts KekdDown in `pending` once a kekd stops.

The live test uses the committed rules file unchanged (its `for:` durations do not matter: a rule whose expression
holds is `pending` at once); only the scrape and evaluation intervals of the test's own prometheus.yml are 1 s.
"""
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from conftest import free_port, stop_process
from fake_vault import FakeVaultProcess

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
RULES = MONITORING / "kekd-rules.yaml"
RULE_TESTS = MONITORING / "kekd-rules.test.yaml"
PROMETHEUS_RULE = MONITORING / "kekd-prometheusrule.yaml"
DASHBOARD = MONITORING / "kekd-dashboard.json"
GUIDE = ROOT / "manifests" / "README.md"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(not (PROMTOOL and PROMETHEUS), reason="apt-get install prometheus (CI installs it)")

# Grafana variables in the dashboard's queries, and what the live test substitutes for them.
DASHBOARD_VARIABLES = {"$__rate_interval": "30s", "$instance": ".+"}


def rules_doc():
    return yaml.safe_load(RULES.read_text())


def all_rules():
    return [r for g in rules_doc()["groups"] for r in g["rules"]]


def alert_names():
    return [r["alert"] for r in all_rules() if "alert" in r]


def recording_names():
    return [r["record"] for r in all_rules() if "record" in r]


def dashboard_queries():
    """(panel title, expression with the Grafana variables substituted) for every target of every panel."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in DASHBOARD_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


def dashboard_variable_selectors():
    """(name, series selector) of every label_values() template variable: the node picker must list the kekds."""
    out = []
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
            assert m, var["definition"]
            out.append((var["name"], m.group(1)))
    return out


# ---- static checks ----------------------------------------------------------------------------------------------

@needs_prometheus
def test_promtool_check_rules_passes_on_both_files(tmp_path):
    out = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in out.stdout
    # The operator's resource carries a plain rule file in spec: promtool checks that one too.
    spec = tmp_path / "from-prometheusrule.yaml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]))
    out = subprocess.run([PROMTOOL, "check", "rules", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheusrule_holds_exactly_the_rules_file():
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"] == "kekd"
    assert resource["spec"] == {"groups": rules_doc()["groups"]}


def test_every_alert_has_summary_description_severity_and_a_runbook_section():
    guide = GUIDE.read_text()
    headings = {m.group(1) for m in re.finditer(r"^#{2,4} (Kekd\w+)\s*$", guide, re.M)}
    assert len(alert_names()) == len(set(alert_names()))
    for rule in (r for r in all_rules() if "alert" in r):
        name, annotations = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert len(annotations["summary"]) > 20 and "\n" not in annotations["summary"], name
        assert len(annotations["description"]) > 80, f"{name}: the description says what to do"
        # GitHub's anchor for a heading "### KekdDown" is "#kekddown".
        assert annotations["runbook_url"] == f"manifests/README.md#{name.lower()}", name
        assert name in headings, f"manifests/README.md has no runbook heading for {name}"


def test_rules_only_use_metrics_kekd_exports():
    """Every kekd_* name in the rules, tests and dashboard is one kekd renders (a typo would alert on nothing)."""
    exported = set()
    for source in (ROOT / "Sources" / "Metrics").glob("*.swift"):
        exported |= set(re.findall(r'"(kekd_[a-z_]+)"', source.read_text()))
    assert "kekd_grpc_requests_total" in exported and "kekd_vault_circuit_open" in exported
    text = RULES.read_text() + RULE_TESTS.read_text() + DASHBOARD.read_text()
    for name in set(re.findall(r"\b(kekd_[a-z_]+)", text)):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in exported or base in exported, f"{name} is not a metric kekd exports"


def test_unit_tests_cover_every_alert_firing_and_silent():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fires, silent = set(), set()
    for case in tests["tests"]:
        instances = {m for s in case["input_series"] for m in re.findall(r'instance="([^"]+)"', s["series"])}
        for check in case["alert_rule_test"]:
            expected = check.get("exp_alerts") or []
            if expected:
                fires.add(check["alertname"])
                firing_on = {a["exp_labels"].get("instance") for a in expected}
                # A firing case with a healthy instance among its inputs also proves the alert stays silent there.
                if instances - firing_on:
                    silent.add(check["alertname"])
                for a in expected:
                    assert a.get("exp_annotations", {}).get("summary"), f"{check['alertname']}: annotations are checked"
            else:
                silent.add(check["alertname"])
    assert fires == set(alert_names()), f"never fired: {set(alert_names()) - fires}"
    assert silent == set(alert_names()), f"never shown silent: {set(alert_names()) - silent}"


@needs_prometheus
def test_promtool_test_rules_passes():
    out = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=MONITORING, capture_output=True, text=True)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "SUCCESS" in out.stdout


@needs_prometheus
def test_promtool_test_rules_catches_a_broken_rule(tmp_path):
    """The unit tests can fail: a threshold moved out of reach makes promtool report the missing alert."""
    broken = RULES.read_text().replace("expr: up{job=\"kekd\"} == 0", "expr: up{job=\"kekd\"} == 2")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    out = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0
    assert "KekdDown" in out.stdout + out.stderr


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dash["panels"]:
        assert panel["type"] in ("timeseries", "stat", "table", "gauge"), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            # Every variable used is one the live test substitutes, so the query it runs is the panel's query.
            assert set(re.findall(r"\$\{?\w+\}?", expr)) <= set(DASHBOARD_VARIABLES), expr
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("calls per second", "latency", "in flight", "connections", "key_id", "audit", "backend", "cache",
                  "memory", "file descriptors"):
        assert topic in titles, f"no panel about {topic}"


# ---- a real Prometheus scraping real kekds ---------------------------------------------------------------------

class Prometheus:
    def __init__(self, tmp: Path, targets: dict):
        self.port = free_port()
        shutil.copy(RULES, tmp / RULES.name)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / RULES.name)],
            "scrape_configs": [{"job_name": "kekd", "static_configs": [
                {"targets": [address], "labels": {"instance": name}} for name, address in targets.items()]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.wait(lambda: self.get("/-/ready", raw=True) is not None, 30, "prometheus never became ready")

    def get(self, path, raw=False, **params):
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = r.read()
        except OSError:
            return None
        return body if raw else json.loads(body)

    def query(self, expr):
        reply = self.get("/api/v1/query", query=expr)
        assert reply is not None and reply["status"] == "success", f"{expr}: {reply}"
        return reply["data"]["result"]

    def wait(self, condition, timeout, message):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}")
            if condition():
                return
            time.sleep(0.25)
        raise AssertionError(message)

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def drive_calls(kms_pb, writer, reader):
    """Encrypt/Decrypt/Status on `writer`, a tampered Decrypt (an error code, so the error ratio has data), and cold Decrypts on `reader` (cache
    misses that go to Vault)."""
    pb, grpc_pb = kms_pb
    with grpc.insecure_channel(writer.target) as ch_w, grpc.insecure_channel(reader.target) as ch_r:
        w, r = grpc_pb.KeyManagementServiceStub(ch_w), grpc_pb.KeyManagementServiceStub(ch_r)
        for stub in (w, r):
            deadline = time.time() + 10
            while stub.Status(pb.StatusRequest(), timeout=3).healthz != "ok":
                assert time.time() < deadline, "kekd never became healthy on the fake Vault"
                time.sleep(0.05)
        encrypted = [w.Encrypt(pb.EncryptRequest(plaintext=secrets.token_bytes(32), uid=f"u{i}"), timeout=3) for i in range(5)]
        for enc in encrypted:
            for stub in (w, r):
                stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, key_id=enc.key_id, uid="u",
                                               annotations=dict(enc.annotations)), timeout=3)
        tampered = bytearray(encrypted[0].ciphertext)
        tampered[-1] ^= 1
        with pytest.raises(grpc.RpcError) as failure:
            w.Decrypt(pb.DecryptRequest(ciphertext=bytes(tampered), key_id=encrypted[0].key_id, uid="u",
                                        annotations=dict(encrypted[0].annotations)), timeout=3)
        # Both backends answer a failed authentication tag as INVALID_ARGUMENT (issue 11 item 7).
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@needs_prometheus
def test_prometheus_scrapes_kekd_and_every_rule_and_panel_has_data(kekd_factory, kms_pb, tmp_path):
    with FakeVaultProcess(tmp_path / "vault", "--token-ttl", "3600") as vault:
        nodes = {}
        for name in ("node-a", "node-b"):
            hmac_key = tmp_path / f"{name}-audit-hmac.key"
            hmac_key.write_text(secrets.token_hex(32))
            os.chmod(hmac_key, 0o600)
            nodes[name] = kekd_factory(extra=["--backend", "vault", "--audit-hmac-key-file", str(hmac_key),
                                              *vault.kekd_flags("token")], subdir=name, init_key=False)
        drive_calls(kms_pb, nodes["node-a"], nodes["node-b"])

        prometheus = Prometheus(tmp_path, {n: f"127.0.0.1:{k.health_port}" for n, k in nodes.items()})
        try:
            prometheus.wait(lambda: len(prometheus.query('up{job="kekd"} == 1')) == 2, 20, "both kekds scraped")
            # rate() needs two samples of the series in its window: keep calls coming over a few scrapes.
            drive_calls(kms_pb, nodes["node-a"], nodes["node-b"])

            pending = {f"record {name}": name for name in recording_names()}
            pending.update({f"panel {title!r}: {expr}": expr for title, expr in dashboard_queries()})
            pending.update({f"variable {name}": expr for name, expr in dashboard_variable_selectors()})
            results = {}

            def all_have_data():
                for label, expr in list(pending.items()):
                    result = prometheus.query(expr)
                    if result:
                        results[label] = result
                        del pending[label]
                return not pending

            try:
                prometheus.wait(all_have_data, 30, "no data")
            except AssertionError:
                raise AssertionError("queries that returned no data: " + "; ".join(pending)) from None

            # Things the data must show, not just exist.
            assert {s["metric"]["instance"] for s in results["variable instance"]} == set(nodes)
            key_ids = {s["metric"]["key_id"] for s in prometheus.query('kekd_key_info{job="kekd"}')}
            assert len(key_ids) == 1, "both nodes use the same Vault key, hence one key_id"
            errors = prometheus.query('kekd_grpc_requests_total{job="kekd", op="Decrypt", code="INVALID_ARGUMENT"}')
            assert [s["metric"]["instance"] for s in errors] == ["node-a"]
            misses = prometheus.query('kekd_backend_cache_requests_total{job="kekd", instance="node-b", result="miss"}')
            assert float(misses[0]["value"][1]) >= 1, "node-b's cold Decrypts missed the cache"
            left = float(prometheus.query('kekd_vault_token_expiry_timestamp_seconds{instance="node-a"} - time()')[0]["value"][1])
            assert 3000 < left <= 3600

            # Every rule evaluates cleanly on real data (a bad join or a type error shows up here, not in promtool).
            groups = prometheus.get("/api/v1/rules")["data"]["groups"]
            evaluated = [r for g in groups for r in g["rules"]]
            assert len(evaluated) == len(all_rules())
            for rule in evaluated:
                assert rule["health"] == "ok" and not rule.get("lastError"), rule

            # Nothing alarming on two healthy kekds.
            def firing_or_pending():
                return {a["labels"]["alertname"] for a in prometheus.get("/api/v1/alerts")["data"]["alerts"]}
            assert "KekdDown" not in firing_or_pending()

            # A kekd that stops makes KekdDown pending for its instance.
            assert nodes["node-b"].stop() == 0

            def down_pending():
                alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
                return [a for a in alerts if a["labels"]["alertname"] == "KekdDown"]
            prometheus.wait(lambda: down_pending(), 15, "KekdDown never became pending after kekd stopped")
            (alert,) = down_pending()
            assert alert["state"] == "pending" and alert["labels"]["instance"] == "node-b"
            assert alert["annotations"]["runbook_url"] == "manifests/README.md#kekddown"
        finally:
            prometheus.stop()
