"""Everything to try streamcast on one machine: the simulated fleet, its producer, the
embedded broker, and the demo. Never imported by the stream, model or learn packages."""
