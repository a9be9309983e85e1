"""What operators watch and what supervisors speak: Prometheus metrics, HTTP probes,
systemd's notify protocol, and logging."""
