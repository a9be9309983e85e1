"""What operators watch: metrics that move, probes that tell the truth, a real
Prometheus server scraping the daemon, and promtool's verdict on the exposition."""

from __future__ import annotations

import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest

from streamcast.ops.metrics import Metrics
from streamcast.sim.broker import EmbeddedBroker, free_port

from ..waiting import wait_for
from .conftest import Topics, consume, fleet_readings, produce_readings, settings_for

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_probes_and_metrics_follow_the_daemon(
    broker: EmbeddedBroker, topics: Topics, registry: Path, start_daemon
) -> None:
    settings = settings_for(broker, topics, registry, http={"heartbeat_timeout_s": 1.0})
    running = start_daemon(settings, Metrics())  # with the process collector
    daemon = running.daemon
    http = wait_for(lambda: daemon.http, 30, "the HTTP server")
    base = f"http://127.0.0.1:{http.port}"

    # Not ready while the model loads and before partitions are assigned.
    code, body = _get(base + "/readyz")
    assert code == 503
    assert orjson.loads(body)["status"] == "not_ready"
    running.wait_ready(60)
    code, body = _get(base + "/readyz")
    assert code == 200, body
    assert orjson.loads(body) == {"status": "ready", "model_version": 1, "partitions": 3}

    readings = fleet_readings(3, 100, seed=9)
    produce_readings(broker, topics.readings, readings)
    consume(broker, topics.forecasts, until=lambda r: len(r) >= 3 * 4)

    # Forecasts are counted as the broker's acks come in, on the producer's thread; the
    # commit follows within kafka.commit_interval_ms.
    def counted() -> str | None:
        text = _get(base + "/metrics")[1].decode()
        done = _metric(text, "streamcast_forecasts_total") >= 3 * 4
        return text if done and _metric(text, 'streamcast_commits_total{outcome="ok"}') else None

    text = wait_for(counted, 10, "the forecasts' acks and their commit")
    assert _metric(text, 'streamcast_readings_total{outcome="ok"}') == len(readings)
    assert _metric(text, "streamcast_forecasts_total") == 3 * 4
    assert _metric(text, "streamcast_sensors") == 3
    assert _metric(text, 'streamcast_model_info{version="1"}') == 1
    assert _metric(text, "streamcast_batch_size_count") >= 1
    assert _metric(text, "streamcast_end_to_end_seconds_count") == 3 * 4
    assert _metric(text, 'streamcast_commits_total{outcome="ok"}') >= 1
    assert _metric(text, "streamcast_ready") == 1
    assert "streamcast_consumer_lag{" in text
    assert _metric(text, "process_cpu_seconds_total") > 0

    # promtool's linter has nothing to say about the live exposition.
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint

    # Liveness: a stalled main loop fails /healthz; it recovers when the loop turns again.
    assert _get(base + "/healthz")[0] == 200
    release = threading.Event()
    daemon.loop_hook = release.wait
    wait_for(lambda: _get(base + "/healthz")[0] == 503, 10, "/healthz to fail")
    assert orjson.loads(_get(base + "/healthz")[1])["status"] == "stalled"
    daemon.loop_hook = None
    release.set()
    wait_for(lambda: _get(base + "/healthz")[0] == 200, 10, "/healthz to recover")
    assert running.stop() == 0


def test_a_real_prometheus_server_scrapes_the_daemon(
    broker: EmbeddedBroker, topics: Topics, registry: Path, start_daemon, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    assert binary, "the prometheus server is missing: apt-get install prometheus"
    running = start_daemon(settings_for(broker, topics, registry))
    running.wait_ready(60)
    produce_readings(broker, topics.readings, fleet_readings(2, 110, seed=10))
    consume(broker, topics.forecasts, until=lambda r: len(r) >= 2 * 14)

    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: streamcast\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{running.daemon.http.port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        query = urllib.parse.urlencode({"query": "streamcast_forecasts_total"})

        def forecasts() -> float | None:
            try:
                code, body = _get(f"http://127.0.0.1:{port}/api/v1/query?{query}")
            except OSError:
                return None
            if code != 200:
                return None
            result = orjson.loads(body)["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        value = wait_for(forecasts, 60, "Prometheus to scrape streamcast_forecasts_total")
        assert value >= 2 * 14
    finally:
        server.terminate()
        server.wait(10)
        log.close()
    assert running.stop() == 0
