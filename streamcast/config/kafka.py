"""The ``kafka`` settings section: brokers, topics, client tuning and security.

Its own module because it is the largest section and the only one that turns into
client options; the security values pass through to the Kafka clients unchanged,
and secrets are revealed only in ``client_options``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from streamcast.config.sections import Section


class KafkaSettings(Section):
    bootstrap_servers: str = "localhost:9092"
    input_topic: str = "streamcast.readings"
    output_topic: str = "streamcast.forecasts"
    dlq_topic: str = "streamcast.readings.dlq"
    group_id: str = "streamcast"
    client_id: str = "streamcast"
    session_timeout_ms: int = Field(10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    max_poll_records: int = Field(2_000, ge=1)
    fetch_max_wait_ms: int = Field(
        20,
        ge=0,
        le=60_000,
        description="longest the broker may hold a fetch for more data; it bounds how "
        "long a reading can wait at the broker before the daemon sees it (the client's "
        "own default, 500, adds up to half a second on brokers that hold fetches)",
    )
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    compression_type: Literal["none", "gzip", "lz4", "snappy", "zstd"] = "lz4"
    linger_ms: int = Field(5, ge=0)
    producer_batch_bytes: int = Field(524_288, ge=1_024)
    delivery_timeout_s: float = Field(30.0, gt=0)
    commit_interval_ms: int = Field(
        1_000,
        ge=0,
        description="at-least-once: how often the loop waits for the broker's acks and "
        "commits (0: after every poll); a crash redoes at most this much work. "
        "Exactly-once commits a transaction after every poll",
    )
    max_pending_bytes: int = Field(
        16 * 1_048_576,
        ge=65_536,
        description="output sent but not yet acknowledged beyond which the loop stops "
        "fetching and waits for the broker (backpressure)",
    )
    startup_timeout_s: float = Field(
        30.0,
        gt=0,
        description="one deadline for everything start-up asks of the broker (connect, "
        "create/check topics, input metadata); model loading is not counted",
    )
    output_partitions: int | None = Field(
        None,
        ge=1,
        description="partitions of the forecast topic if start-up creates it; "
        "default: as many as the input topic has (1 if that does not exist yet)",
    )
    dlq_partitions: int = Field(
        1, ge=1, description="partitions of the dead-letter topic if start-up creates it"
    )
    replication_factor: int = Field(
        1, description="replicas of the topics start-up creates; -1: the broker's default"
    )
    exactly_once: bool = Field(
        False,
        description="one Kafka transaction per delivery cycle: forecasts, dead letters and "
        "the input offsets they cover commit together (read them with read_committed)",
    )
    transactional_id: str | None = Field(
        None,
        min_length=1,
        description="exactly-once only: the producer's transactional.id; must be unique per "
        "running replica and stable across its restarts (e.g. a StatefulSet pod name). "
        "Default: CLIENT_ID.GROUP_ID.HOSTNAME.PID.RANDOM, unique per process",
    )
    max_message_bytes: int = Field(65_536, ge=64)
    # Security settings are passed through to the Kafka clients unchanged.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",")]
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected HOST:PORT[,HOST:PORT...], got {server!r}")
        return ",".join(servers)

    @field_validator("replication_factor")
    @classmethod
    def _replicas(cls, value: int) -> int:
        if value < 1 and value != -1:
            raise ValueError("expected a replica count >= 1, or -1 for the broker's default")
        return value

    def client_options(self) -> dict[str, Any]:
        """Options shared by every Kafka client, secrets revealed only here."""
        opts: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",")],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": (
                self.sasl_plain_password.get_secret_value() if self.sasl_plain_password else None
            ),
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_password": self.ssl_password.get_secret_value() if self.ssl_password else None,
        }
        opts.update({k: v for k, v in optional.items() if v is not None})
        if self.security_protocol in ("SSL", "SASL_SSL"):
            opts["ssl_check_hostname"] = self.ssl_check_hostname
        return opts
